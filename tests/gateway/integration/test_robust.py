"""End to end: every resource an answer takes is bounded by a setting — answers too long to hold
are streamed at the client's pace, and what answers hold outside the cache has a budget."""
import hashlib
import json
import socket
import threading
import unittest
import urllib.parse

from harness import Gateway, eventually, route
from raw_upstream import RawUpstream, Script
from upstream import Upstream


def q(**params):
    return "?" + urllib.parse.urlencode(params, doseq=True)


def read_all(sock):
    data = b""
    while chunk := sock.recv(1 << 20):
        data += chunk
    return data


def dechunk(body):
    out = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out += body[:size]
        body = body[size + 2:]


class Streaming(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        cls.raw = RawUpstream()
        cls.gw = Gateway(route("api", "/api", cls.up.port, fresh_ttl='"1h"', timeout='"30s"') +
                         route("raw", "/raw", cls.raw.port, fresh_ttl='"1h"', timeout='"30s"'),
                         cache_extra='store = "none"\nmax_object_bytes = "1MiB"',
                         server_extra='inflight_memory = "64MiB"')

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.up.stop()
        cls.raw.stop()

    def test_an_answer_past_max_object_bytes_is_streamed_whole_and_never_stored(self):
        target = "/api/big" + q(pad=3_000_000, cc="max-age=600")
        s, h, body = self.gw.get(target)
        self.assertEqual(s, 200)
        self.assertEqual(int(h["content-length"]), len(body))
        self.assertEqual(json.loads(body)["pad"], "x" * 3_000_000)
        s, h, again = self.gw.get(target)
        # Fetched again, not stored; the key is remembered as one whose answers pass (each
        # request streams its own).
        self.assertEqual((h["x-cache"], json.loads(again)["n"]), ("PASS", 2))
        self.assertEqual(self.up.count(target), 2)
        self.assertTrue(eventually(lambda: self.gw.stats()["inflight"]["bytes"] == 0))

    def test_a_small_stored_answer_holds_its_size_not_the_room_it_was_read_into(self):
        def memory():
            return self.gw.stats()["tiers"]["memory"]
        before = memory()
        s, _, body = self.gw.get("/api/small" + q(pad=1000, cc="max-age=600"))
        self.assertEqual((s, len(body) > 1000), (200, True))
        self.raw.script("/raw/small-chunked", Script(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"400\r\n" + b"y" * 1024 + b"\r\n0\r\n\r\n"))
        s, _, body = self.gw.get("/raw/small-chunked")
        self.assertEqual((s, body), (200, b"y" * 1024))
        after = memory()
        self.assertEqual(after["entries"] - before["entries"], 2)
        # Each entry is charged what it holds: its 1 KiB body, head and bookkeeping — not a
        # 64 KiB read buffer.
        self.assertLess((after["bytes"] - before["bytes"]) / 2, 4096)

    def test_an_answer_of_unknown_length_is_streamed_in_chunks_or_until_close(self):
        payload = bytes(range(256)) * 8192  # 2 MiB
        chunks = b"".join(b"%x\r\n" % 65536 + payload[i:i + 65536] + b"\r\n"
                          for i in range(0, len(payload), 65536))
        answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
        self.raw.script("/raw/chunked", Script(answer))
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=30) as s:
            s.sendall(b"GET /raw/chunked HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            head, _, body = read_all(s).partition(b"\r\n\r\n")
        self.assertIn(b"transfer-encoding: chunked", head.lower())
        self.assertEqual(hashlib.sha256(dechunk(body)).digest(), hashlib.sha256(payload).digest())
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=30) as s:
            s.sendall(b"GET /raw/chunked HTTP/1.0\r\nHost: t\r\n\r\n")
            head, _, body = read_all(s).partition(b"\r\n\r\n")
        self.assertNotIn(b"transfer-encoding", head.lower())
        self.assertEqual(body, payload)  # an HTTP/1.0 client reads to the close

    def test_clients_that_stop_reading_hold_a_bounded_buffer_not_their_answer(self):
        target = "/api/stall" + q(pad=8_000_000)
        socks = []
        try:
            for _ in range(4):
                s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=30)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.sendall(f"POST {target} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
                          .encode())
                socks.append(s)
            self.assertTrue(eventually(lambda: self.up.count(target) == 4))
            # Four 8 MB answers: what the gateway holds for them is their buffers, not them.
            held = self.gw.stats()["inflight"]["bytes"]
            self.assertLess(held, 4 * 512 * 1024, held)
        finally:
            for s in socks:
                s.close()
        self.assertTrue(eventually(lambda: self.gw.stats()["inflight"]["bytes"] == 0))


    def test_head_of_a_streamed_answer_says_the_declared_length_and_sends_no_body(self):
        target = "/api/big-head" + q(pad=2_000_000, cc="max-age=600")
        s, h, body = self.gw.get(target, method="HEAD")
        self.assertEqual((s, body), (200, b""))
        self.assertGreater(int(h["content-length"]), 2_000_000)

    def test_a_connection_carries_the_next_request_after_a_streamed_answer(self):
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=30) as s:
            f = s.makefile("rb")
            for i in range(3):
                s.sendall(f"GET /api/keep{i}?pad=1500000 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                self.assertTrue(f.readline().startswith(b"HTTP/1.1 200"))
                length = 0
                while (line := f.readline()) != b"\r\n":
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.assertEqual(len(f.read(length)), length)

    def test_an_upstream_that_ends_short_of_its_declared_length_cuts_the_client_off(self):
        declared = 3 << 20
        self.raw.script("/raw/short", Script(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
                                             % declared + b"y" * (2 << 20), close=True))
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=30) as s:
            s.sendall(b"GET /raw/short HTTP/1.1\r\nHost: t\r\n\r\n")
            head, _, body = read_all(s).partition(b"\r\n\r\n")  # ends: the gateway closed
        self.assertIn(b"content-length: %d" % declared, head.lower())
        self.assertLess(len(body), declared)

    def test_slow_readers_of_private_or_long_cached_answers_hold_buffers_only(self):
        targets = ["/api/slow-private" + q(pad=6_000_000, cc="private", n=i) for i in range(3)] + \
                  ["/api/slow-long" + q(pad=6_000_000, cc="max-age=60", n=i) for i in range(3)]
        socks = []
        try:
            for target in targets:
                s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=30)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                socks.append(s)
            self.assertTrue(eventually(lambda: all(self.up.count(t) == 1 for t in targets)))
            held = self.gw.stats()["inflight"]["bytes"]
            self.assertLess(held, len(targets) * 512 * 1024, held)  # never whole answers
        finally:
            for s in socks:
                s.close()
        self.assertTrue(eventually(lambda: self.gw.stats()["inflight"]["bytes"] == 0))


class ClientsThatLeave(unittest.TestCase):
    def test_clients_that_leave_never_count_against_the_upstreams_breaker(self):
        up = Upstream()
        gw = Gateway(route("api", "/api", up.port, timeout='"30s"',
                           breaker='{ failure_rate = 0.5, window = 10, min_calls = 4 }'),
                     cache_extra='store = "none"')
        try:
            up.hold("/api/left")
            for i in range(8):
                s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
                s.sendall(b"POST /api/left HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
                self.assertTrue(up.wait_held("/api/left", i + 1))
                s.close()
            self.assertTrue(eventually(lambda: gw.stats()["requests_active"] == 0))
            up.release("/api/left")
            self.assertEqual(set(gw.stats()["breakers"].values()), {"closed"})
            self.assertEqual(gw.get("/api/after")[0], 200)
        finally:
            gw.stop()
            up.stop()


class InflightBudget(unittest.TestCase):
    def test_past_inflight_memory_requests_get_503_with_retry_after(self):
        up = Upstream()
        gw = Gateway(route("api", "/api", up.port, timeout='"30s"', max_wait='"30s"'),
                     cache_extra='store = "none"\nmax_object_bytes = "8MiB"',
                     server_extra='inflight_memory = "1MiB"')
        try:
            s, h, body = gw.get("/api/too-big-to-hold" + q(pad=3_000_000))
            self.assertEqual(s, 503, body[:200])
            self.assertEqual(h["retry-after"], "1")
            self.assertGreater(gw.stats()["inflight"]["refused"], 0)
            self.assertEqual(gw.get("/api/small")[0], 200)  # the budget was given back
            self.assertEqual(gw.stats()["inflight"]["bytes"], 0)
        finally:
            gw.stop()
            up.stop()


if __name__ == "__main__":
    unittest.main()
