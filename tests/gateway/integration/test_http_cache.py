"""The gateway as an RFC 9111 shared cache, end to end: the real binary, the counting upstream.

Two routes on one upstream: /o obeys the origin only (every route window at 0, as a careful
operator sets it up), /d keeps the route defaults (fresh 10 s, stale 60 s, stale-if-error 300 s),
which apply only where the origin is silent.
"""
import email.utils
import json
import time
import unittest
import urllib.parse

from harness import Gateway, route
from upstream import Upstream


def q(*pairs, **params):
    """A query string; `pairs` for repeated names (("hdr", "A:1"), ("hdr", "B:2"))."""
    return "?" + urllib.parse.urlencode(list(pairs) + list(params.items()))


def http_date(offset_s):
    return email.utils.formatdate(time.time() + offset_s, usegmt=True)


class HttpCache(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        one_attempt = '{ attempts = 1, base = "10ms", cap = "10ms", budget = 10.0 }'
        routes = (route("origin-only", "/o", cls.up.port, fresh_ttl='"0s"', stale_ttl='"0s"',
                        stale_if_error='"0s"', retry=one_attempt) +
                  route("defaults", "/d", cls.up.port, retry=one_attempt) +
                  route("client", "/c", cls.up.port, honor_client_cache_control="true") +
                  route("no-hints", "/n", cls.up.port, forward_early_hints="false"))
        cls.gw = Gateway(routes, cache_extra="store = \"none\"")

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.up.stop()

    def tearDown(self):
        self.down(False)

    def down(self, on):
        with self.up.state.lock:
            self.up.state.down = on

    def fetch(self, target, headers=None):
        s, h, body = self.gw.get(target, headers)
        return s, h.get("x-cache"), h, body

    def x_caches(self, target, n=2, headers=None):
        return [self.fetch(target, headers)[1] for _ in range(n)]

    # RFC 9111 §5.3, §4.2.1
    def test_an_expires_only_answer_is_stored_until_it_expires(self):
        target = "/o/expires" + q(hdr="Expires:" + http_date(600))
        self.assertEqual(self.x_caches(target), ["MISS", "HIT"])
        for name, expires in (("past", http_date(-600)), ("zero", "0"), ("junk", "soon")):
            target = f"/d/expires-{name}" + q(hdr="Expires:" + expires)
            # Expired on arrival: not the route's 10 s either.
            self.assertEqual(self.x_caches(target), ["MISS", "MISS"], name)
            self.assertEqual(self.up.count(target), 2)

    # §4.2.1: conflicting duplicates are stale, never "the last one wins"
    def test_conflicting_max_age_directives_make_the_answer_stale(self):
        target = "/d/conflict" + q(cc="max-age=0, max-age=600")
        self.assertEqual(self.x_caches(target), ["MISS", "MISS"])

    # §5.4
    def test_pragma_no_cache_without_cache_control_is_expired(self):
        target = "/d/pragma" + q(hdr="Pragma:no-cache")
        self.assertEqual(self.x_caches(target), ["MISS", "MISS"])

    # §4.2.2
    def test_last_modified_gives_a_heuristic_lifetime(self):
        target = "/o/heuristic" + q(lm=http_date(-10 * 86400))
        self.assertEqual(self.x_caches(target), ["MISS", "HIT"])
        silent = "/o/silent"
        self.assertEqual(self.x_caches(silent), ["MISS", "MISS"])

    # §4.3.1, §4.3.3, §4.3.4, §3.2: kept past its life, revalidated, renewed with the 304's
    # header fields (Content-Length aside), served whole.
    def test_an_expired_answer_is_revalidated_and_the_304_updates_its_headers(self):
        target = "/o/reval" + q(("nm", "Cache-Control:max-age=3600"), ("nm", "Test-Header:new"),
                                etag='"v1"', cc="max-age=0", hdr="Test-Header:old")
        s1, x1, h1, b1 = self.fetch(target)
        self.assertEqual((s1, x1, h1["test-header"]), (200, "MISS", "old"))
        s2, x2, h2, b2 = self.fetch(target)
        self.assertEqual((s2, x2, b2), (200, "REVALIDATED", b1))
        self.assertEqual(self.up.state.not_modified, 1)
        self.assertEqual(h2["test-header"], "new")
        self.assertEqual(h2["cache-control"], "max-age=3600")
        self.assertEqual(int(h2["content-length"]), len(b1))  # the 304's 0 is not taken
        s3, x3, h3, b3 = self.fetch(target)
        self.assertEqual((x3, h3["test-header"], b3), ("HIT", "new", b1))
        self.assertEqual(self.up.count(target), 2)

    # §4.2.4, §5.2.2.2, §5.2.2.4, §5.2.2.10: stale is refused where the origin forbids it,
    # though the route has stale windows.
    def test_stale_is_refused_where_the_origin_forbids_it(self):
        forbidding = {"no-cache": "no-cache", "must-revalidate": "max-age=0, must-revalidate",
                      "proxy-revalidate": "max-age=0, proxy-revalidate", "s-maxage": "s-maxage=0"}
        for name, cc in forbidding.items():
            self.assertEqual(self.fetch(f"/d/forbid-{name}" + q(cc=cc))[1], "MISS")
        control = "/d/forbid-control" + q(cc="max-age=0")
        self.assertEqual(self.fetch(control)[1], "MISS")
        self.down(True)
        for name, cc in forbidding.items():
            s, x, _, _ = self.fetch(f"/d/forbid-{name}" + q(cc=cc))
            self.assertEqual((s, x), (503, "MISS"), name)
        # Where the origin only said max-age=0, the route's stale-if-error window serves it.
        s, x, _, _ = self.fetch(control)
        self.assertEqual((s, x), (200, "STALE"))

    # §5.1: the first Age value counts, unclamped; an invalid one is ignored.
    def test_age_is_read_from_the_first_value_and_never_clamped(self):
        target = "/o/age" + q(("hdr", "Age:7200"), ("hdr", "Age:0"), cc="max-age=86400")
        self.fetch(target)
        _, x, h, _ = self.fetch(target)
        self.assertEqual(x, "HIT")
        self.assertGreaterEqual(int(h["age"]), 7200)
        self.assertLess(int(h["age"]), 7200 + 60)
        target = "/o/age-list" + q(hdr="Age:7200, 0", cc="max-age=86400")
        self.fetch(target)
        self.assertGreaterEqual(int(self.fetch(target)[2]["age"]), 7200)
        # Older than its lifetime on arrival: stale at once.
        target = "/o/age-old" + q(hdr="Age:120", cc="max-age=60")
        self.assertEqual(self.x_caches(target), ["MISS", "MISS"])
        target = "/o/age-junk" + q(hdr="Age:soon", cc="max-age=60")
        self.fetch(target)
        _, x, h, _ = self.fetch(target)
        self.assertEqual(x, "HIT")
        self.assertLess(int(h["age"]), 60)

    # RFC 9110 §7.6.1
    def test_fields_the_origin_names_in_connection_are_neither_stored_nor_forwarded(self):
        target = "/o/conn" + q(("hdr", "Connection:X-Secret"), ("hdr", "X-Secret:1"),
                               cc="max-age=60")
        for expected in ("MISS", "HIT"):
            _, x, h, _ = self.fetch(target)
            self.assertEqual(x, expected)
            self.assertNotIn("x-secret", h)

    # §4.1: an answer with Vary is stored under its variant's key on first sight.
    def test_a_vary_answer_is_stored_on_first_sight(self):
        target = "/o/vary" + q(vary="Accept-Language", cc="max-age=60")
        en = {"Accept-Language": "en"}
        self.assertEqual(self.x_caches(target, 2, en), ["MISS", "HIT"])
        self.assertEqual(self.fetch(target, {"Accept-Language": "fr"})[1], "MISS")
        self.assertEqual(self.up.count(target), 2)

    # §3: any status with explicit freshness may be stored; the breaker and retries still see
    # a failure, and a stale-if-error copy is preferred.
    def test_an_error_status_with_explicit_freshness_is_stored(self):
        target = "/o/gone-away" + q(status="503", cc="max-age=60")
        self.assertEqual([self.fetch(target)[:2] for _ in range(2)], [(503, "MISS"), (503, "HIT")])
        self.assertEqual(self.up.count(target), 1)
        silent = "/o/error-silent" + q(status="503")
        self.assertEqual(self.x_caches(silent), ["MISS", "MISS"])

    # RFC 9213 §2.2
    def test_cdn_cache_control_takes_precedence(self):
        target = "/o/cdn" + q(cc="no-store", hdr="CDN-Cache-Control:max-age=60")
        self.assertEqual(self.x_caches(target), ["MISS", "HIT"])
        target = "/o/surrogate" + q(cc="max-age=60", hdr="Surrogate-Control:no-store")
        self.assertEqual(self.x_caches(target), ["MISS", "PASS"])  # no-store: hit-for-pass
        self.assertEqual(self.up.count(target), 2)

    # §5.2.1: a client's Cache-Control counts only where the route says so.
    def test_client_cache_control_is_honoured_only_where_the_route_allows(self):
        target = "/c/client" + q(etag='"c1"', cc="max-age=600")
        self.assertEqual(self.x_caches(target), ["MISS", "HIT"])
        self.assertEqual(self.fetch(target, {"Cache-Control": "no-cache"})[1], "REVALIDATED")
        self.assertEqual(self.fetch(target, {"Cache-Control": "max-age=3600"})[1], "HIT")
        self.assertEqual(self.fetch(target, {"Pragma": "no-cache"})[1], "REVALIDATED")
        self.assertEqual(self.up.count(target), 3)
        # max-age counts the age the answer arrived with, and refuses stale answers.
        aged = "/c/aged" + q(etag='"a1"', cc="max-age=86400", hdr="Age:3000")
        self.assertEqual(self.x_caches(aged), ["MISS", "HIT"])
        self.assertEqual(self.fetch(aged, {"Cache-Control": "max-age=600"})[1], "REVALIDATED")
        s, x, _, _ = self.fetch("/c/absent", {"Cache-Control": "only-if-cached"})
        self.assertEqual(s, 504)
        self.assertEqual(self.up.count("/c/absent"), 0)
        self.assertEqual(self.fetch(target, {"Cache-Control": "only-if-cached"})[:2], (200, "HIT"))
        # The default: a client cannot send requests through to the origin.
        target = "/d/client" + q(cc="max-age=600")
        self.fetch(target)
        self.assertEqual(self.fetch(target, {"Cache-Control": "no-cache"})[1], "HIT")
        self.assertEqual(self.up.count(target), 1)


    # RFC 9110 §15.2: forwarded by default (Protocol tests it); a route may keep them back.
    def test_a_route_may_keep_early_hints_back(self):
        target = "/n/hints" + q(mode="early_hints")
        data = self.gw.raw_exchange(f"GET {target} HTTP/1.1\r\nHost: t\r\n"
                                    "Connection: close\r\n\r\n".encode())
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:40])
        self.assertNotIn(b"Link:", data)


class KeptAcrossRestart(unittest.TestCase):
    """A kept answer survives a restart on the disk tier and is revalidated, not fetched whole."""

    def test_a_kept_answer_is_revalidated_after_a_restart(self):
        up = Upstream()
        routes = route("origin-only", "/o", up.port, fresh_ttl='"0s"', stale_ttl='"0s"',
                       stale_if_error='"0s"')
        gw = Gateway(routes)
        try:
            target = "/o/kept" + q(etag='"k1"', cc="max-age=0")
            s, h, body = gw.get(target)
            self.assertEqual(h["x-cache"], "MISS")
            gw.stop()
            gw = Gateway(routes, store_dir=gw.store_dir)
            s, h, again = gw.get(target)
            self.assertEqual((s, h["x-cache"], again), (200, "REVALIDATED", body))
            self.assertEqual(up.state.not_modified, 1)
        finally:
            gw.stop()
            up.stop()


if __name__ == "__main__":
    unittest.main()
