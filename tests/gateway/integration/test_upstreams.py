"""What the gateway sends upstream and where: IPv6 upstreams, the route's own header fields (an
API key clients never see or send) and the Host it names."""
import json
import os
import socket
import subprocess
import tempfile
import unittest

from harness import BIN, Gateway
from upstream import Upstream

SECRET = "tok-8c1f2e9a-never-shown"


def lines_named(lines, name):
    return [v for k, v in lines if k.lower() == name.lower()]


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@unittest.skipUnless(ipv6_loopback(), "no IPv6 loopback on this machine")
class Ipv6Upstream(unittest.TestCase):
    def test_an_upstream_at_an_ipv6_literal_is_reached_with_its_host(self):
        up = Upstream(host="::1")
        gw = Gateway(f'[[routes]]\nname = "v6"\nprefix = "/v6"\nupstream = "http://[::1]:{up.port}"\n')
        try:
            s, h, body = gw.get("/v6/a?cc=max-age%3D60")
            self.assertEqual(s, 200, body)
            self.assertEqual(up.count("/v6/a?cc=max-age%3D60"), 1)
            self.assertEqual(up.state.headers_seen[-1]["host"], f"[::1]:{up.port}")
            self.assertEqual(gw.get("/v6/a?cc=max-age%3D60")[1]["x-cache"], "HIT")
        finally:
            gw.stop()
            up.stop()


class RouteHeaders(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        os.environ["UNHERD_TEST_API_TOKEN"] = SECRET
        try:
            cls.gw = Gateway(
                f'[[routes]]\nname = "api"\nprefix = "/api"\n'
                f'upstream = "http://127.0.0.1:{cls.up.port}"\n'
                'headers = { Authorization = "Bearer ${UNHERD_TEST_API_TOKEN}", '
                '"X-Api-Key" = "k-${UNHERD_TEST_API_TOKEN}" }\n'
                'host = "api.example.com"\n')
        finally:
            del os.environ["UNHERD_TEST_API_TOKEN"]

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.up.stop()

    def assert_sent_the_routes_fields(self, lines):
        self.assertEqual(lines_named(lines, "Authorization"), [f"Bearer {SECRET}"])
        self.assertEqual(lines_named(lines, "X-Api-Key"), [f"k-{SECRET}"])
        self.assertEqual(lines_named(lines, "Host"), ["api.example.com"])

    def test_the_routes_fields_reach_the_upstream_and_the_clients_own_never_do(self):
        forged = {"Authorization": "Bearer client-forged", "X-Api-Key": "client-key"}
        s, _, _ = self.gw.get("/api/pass", method="POST", body=b"x", headers=forged)
        self.assertEqual(s, 200)
        self.assert_sent_the_routes_fields(self.up.state.lines_seen[-1])
        # A cached fetch, then its revalidation (If-None-Match, answered 304).
        target = "/api/cached?cc=no-cache&etag=v1"
        self.assertEqual(self.gw.get(target, headers=forged)[1]["x-cache"], "MISS")
        self.assert_sent_the_routes_fields(self.up.state.lines_seen[-1])
        _, h, _ = self.gw.get(target, headers=forged)
        self.assertEqual(h["x-cache"], "REVALIDATED")
        self.assertEqual(self.up.state.headers_seen[-1].get("if-none-match"), "v1")
        self.assert_sent_the_routes_fields(self.up.state.lines_seen[-1])

    def test_answers_fetched_with_the_gateways_key_are_shared_whatever_the_client_sends(self):
        target = "/api/shared?cc=max-age%3D60"
        self.assertEqual(self.gw.get(target)[1]["x-cache"], "MISS")
        self.assertEqual(self.gw.get(target)[1]["x-cache"], "HIT")
        # A client's own Authorization is dropped, so it neither passes nor splits the cache.
        _, h, _ = self.gw.get(target, headers={"Authorization": "Bearer mine"})
        self.assertEqual(h["x-cache"], "HIT")
        self.assertEqual(self.up.count(target), 1)

    def test_an_answer_that_varies_on_the_routes_field_is_keyed_without_it(self):
        target = "/api/varies?cc=max-age%3D60&vary=Authorization"
        self.assertEqual(self.gw.get(target)[1]["x-cache"], "MISS")
        self.assertEqual(self.gw.get(target)[1]["x-cache"], "HIT")
        self.assertEqual(self.up.count(target), 1)

    def test_a_trace_carries_none_of_the_routes_fields(self):
        s, _, _ = self.gw.get("/api/trace", method="TRACE")
        self.assertEqual(s, 200)
        lines = self.up.state.lines_seen[-1]
        self.assertEqual(lines_named(lines, "Authorization"), [])
        self.assertEqual(lines_named(lines, "X-Api-Key"), [])

    def test_the_secret_is_never_shown(self):
        self.gw.get("/api/shown?status=502")
        self.assertNotIn(SECRET, self.gw.get("/stats", admin=True)[2].decode())
        self.assertNotIn(SECRET, self.gw.get("/metrics", admin=True)[2].decode())
        with open(self.gw.access_log) as f:
            self.assertNotIn(SECRET, f.read())
        out = subprocess.run([BIN, "check", "--config", self.gw.config], capture_output=True,
                             text=True, timeout=30,
                             env=dict(os.environ, UNHERD_TEST_API_TOKEN=SECRET))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn('"Authorization" = "***"', out.stdout)
        self.assertNotIn(SECRET, out.stdout + out.stderr)

    def test_check_names_a_variable_that_is_not_set(self):
        env = {k: v for k, v in os.environ.items() if k != "UNHERD_TEST_API_TOKEN"}
        out = subprocess.run([BIN, "check", "--config", self.gw.config], capture_output=True,
                             text=True, timeout=30, env=env)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("routes[0].headers.Authorization", out.stderr)
        self.assertIn("UNHERD_TEST_API_TOKEN", out.stderr)


class CredentialsInTheUrl(unittest.TestCase):
    def test_are_refused_by_check_pointing_at_headers(self):
        with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
            f.write('[[routes]]\nname = "a"\nprefix = "/"\nupstream = "http://u:p@127.0.0.1:9"\n')
            f.flush()
            out = subprocess.run([BIN, "check", "--config", f.name], capture_output=True,
                                 text=True, timeout=30)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn(":4: routes[0].upstream: credentials", out.stderr)
        self.assertIn("headers", out.stderr)


if __name__ == "__main__":
    unittest.main()
