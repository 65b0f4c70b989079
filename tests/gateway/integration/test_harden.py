"""End to end: the gateway under a hostile client, a bad configuration, a stalled log reader, a
loop of gateways and a shortage of file descriptors."""
import json
import os
import resource
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.request

from harness import BIN, TOKEN, Gateway, eventually, route
from upstream import Upstream

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def write_config(text):
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write(text)
    f.close()
    return f.name


class Listeners(unittest.TestCase):
    def test_a_second_gateway_on_the_same_port_is_refused(self):
        up = Upstream()
        first = Gateway(route("api", "/api", up.port))
        try:
            path = write_config(
                f'[server]\nlisten = "127.0.0.1:{first.port}"\nadmin_listen = "127.0.0.1:0"\n'
                f'[cache]\nstore = "none"\n' + route("api", "/api", up.port))
            r = subprocess.run([BIN, "serve", "--config", path], capture_output=True, text=True,
                               timeout=30)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn(f"cannot listen on 127.0.0.1:{first.port}", r.stderr)
            # The first gateway still answers every request itself.
            for _ in range(20):
                self.assertEqual(first.get("/api/x")[0], 200)
            os.unlink(path)
        finally:
            first.stop()
            up.stop()

    def test_admin_listen_equal_to_listen_is_refused_by_check_and_serve(self):
        path = write_config('[server]\nlisten = "127.0.0.1:18080"\n'
                            'admin_listen = "127.0.0.1:18080"\n')
        for cmd in ("check", "serve"):
            r = subprocess.run([BIN, cmd, "--config", path], capture_output=True, text=True,
                               timeout=30)
            self.assertEqual(r.returncode, 2, cmd)
            self.assertIn(":3: server.admin_listen", r.stderr)
        os.unlink(path)

    def test_an_access_log_in_a_missing_directory_is_an_error_not_a_new_directory(self):
        missing = os.path.join(tempfile.mkdtemp(), "no-such-dir")
        path = write_config(f'[server]\nlisten = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\n'
                            f'access_log = "{missing}/access.log"\n[cache]\nstore = "none"\n')
        r = subprocess.run([BIN, "serve", "--config", path], capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"{missing}/access.log", r.stderr)
        self.assertFalse(os.path.exists(missing))
        os.unlink(path)


class Logging(unittest.TestCase):
    def test_a_stdout_log_nobody_reads_drops_lines_and_never_stops_serving(self):
        up = Upstream()
        # stdout is a pipe this test never reads from after the gateway says where it listens.
        gw = Gateway(route("api", "/api", up.port, fresh_ttl='"1h"'), access_log="-",
                     server_extra="access_log_queue = 64")
        try:
            conn = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            request = b"GET /api/logged HTTP/1.1\r\nHost: t\r\n\r\n"
            # 3,000 lines of ~200 bytes: far past the pipe (64 KiB) and the queue (64 lines).
            answered = 0
            buf = b""
            for _ in range(30):
                conn.sendall(request * 100)
                while buf.count(b"HTTP/1.1 200") < 100:
                    chunk = conn.recv(1 << 20)
                    self.assertTrue(chunk, "the gateway closed the connection")
                    buf += chunk
                answered += 100
                buf = buf[buf.rfind(b"HTTP/1.1 200") + 1:]
            conn.close()
            self.assertEqual(answered, 3000)
            stats = gw.stats()
            self.assertGreater(stats["access_log_dropped"], 0)
            metrics = gw.get("/metrics", admin=True)[2].decode()
            self.assertIn("unherd_access_log_dropped_total", metrics)
        finally:
            gw.proc.kill()
            gw.proc.wait()
            up.stop()

    def test_sigterm_and_sighup_work_while_stdout_is_not_read(self):
        up = Upstream()
        gw = Gateway(route("api", "/api", up.port), access_log="-",
                     server_extra="access_log_queue = 64")
        try:
            conn = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            buf = b""
            for _ in range(15):  # 1,500 lines: the pipe is full, the writer is stuck in a write
                conn.sendall(b"GET /api/s HTTP/1.1\r\nHost: t\r\n\r\n" * 100)
                while buf.count(b"HTTP/1.1 200") < 100:
                    buf += conn.recv(1 << 20)
                buf = buf[buf.rfind(b"HTTP/1.1 200") + 1:]
            conn.close()
            gw.send_signal(signal.SIGHUP)  # retargets the log: must not wait for the writer
            self.assertEqual(gw.get("/api/after-reload")[0], 200)
            gw.proc.send_signal(signal.SIGTERM)
            self.assertEqual(gw.proc.wait(timeout=30), 0)
        finally:
            if gw.proc.poll() is None:
                gw.proc.kill()
                gw.proc.wait()
            up.stop()

    def test_a_log_reader_that_goes_away_never_ends_the_gateway(self):
        # `unherd serve | head`: the access log's reader closes its end, and so does stderr's;
        # the next writes fail with EPIPE (and raised SIGPIPE once, which ended the process).
        up = Upstream()
        gw = Gateway(route("api", "/api", up.port), access_log="-")
        try:
            gw.proc.stdout.close()
            gw.proc.stderr.close()
            for i in range(50):
                self.assertEqual(gw.get(f"/api/p{i}")[0], 200)
            gw.send_signal(signal.SIGHUP)  # its "reloaded" line goes to the closed stderr
            self.assertTrue(eventually(lambda: gw.stats()["access_log_dropped"] > 0))
            for i in range(5):
                self.assertEqual(gw.get(f"/api/after{i}")[0], 200)
            self.assertIsNone(gw.proc.poll(), "the gateway ended")
            gw.proc.send_signal(signal.SIGTERM)
            self.assertEqual(gw.proc.wait(timeout=30), 0)
        finally:
            if gw.proc.poll() is None:
                gw.proc.kill()
                gw.proc.wait()
            up.stop()

    def test_the_access_log_queue_is_bounded_in_bytes_and_targets_are_cut(self):
        up = Upstream()
        # A reader that never reads; lines of ~15 KB targets: the queue's bytes stay bounded.
        gw = Gateway(route("api", "/api", up.port), access_log="-",
                     server_extra='access_log_queue_bytes = "256KiB"\nmax_header_bytes = "64KiB"')
        try:
            long = "/api/" + "x" * 15000
            conn = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            buf = b""
            for _ in range(20):
                conn.sendall(f"GET {long} HTTP/1.1\r\nHost: t\r\n\r\n".encode() * 20)
                while buf.count(b"HTTP/1.1 200") < 20:
                    buf += conn.recv(1 << 20)
                buf = buf[buf.rfind(b"HTTP/1.1 200") + 1:]
            conn.close()
            stats = gw.stats()
            self.assertLessEqual(stats["access_log_queued_bytes"], 256 * 1024)
            self.assertGreater(stats["access_log_dropped"], 0)
        finally:
            gw.proc.kill()
            gw.proc.wait()
            up.stop()

    def test_a_long_target_is_cut_in_the_access_log(self):
        up = Upstream()
        gw = Gateway(route("api", "/api", up.port), server_extra='max_header_bytes = "64KiB"')
        try:
            self.assertEqual(gw.get("/api/" + "y" * 10000)[0], 200)
        finally:
            gw.stop()
            up.stop()
        with open(gw.access_log) as f:
            line = json.loads(f.read().splitlines()[-1])
        self.assertTrue(line["path"].endswith("[cut]"))
        self.assertLessEqual(len(line["path"]), 2048 + 5)

    def test_breaker_transitions_are_logged_with_the_upstream(self):
        up = Upstream()
        gw = Gateway(route("b", "/b", up.port, retry="{ attempts = 1 }", stale_if_error='"0s"',
                           breaker='{ window = 2, min_calls = 2, open_for = "1h" }'))
        up.state.down = True
        for i in range(3):
            gw.get(f"/b/{i}")
        gw.stop()
        up.stop()
        self.assertIn(f"upstream http://127.0.0.1:{up.port}: circuit breaker closed -> open",
                      gw.stderr_text)


class Admin(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        cls.gw = Gateway(route("api", "/api", cls.up.port) +
                         route("prod", "/prod", cls.up.port, key='["path", "query:id"]'))

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.up.stop()

    def purge(self, query, headers=AUTH):
        s, _, body = self.gw.get("/purge?" + query, method="POST", admin=True, headers=headers)
        return s, (json.loads(body) if s == 200 else body)

    def test_a_purge_key_is_a_target_normalised_as_requests_are(self):
        self.gw.get("/api/p?a=1&b=2")
        self.assertEqual(self.gw.get("/api/p?b=2&a=1")[1]["x-cache"], "HIT")
        self.assertEqual(self.purge("key=/api/p?b=2&a=1"), (200, {"purged": 1}))
        self.assertEqual(self.gw.get("/api/p?a=1&b=2")[1]["x-cache"], "MISS")
        # Percent-encoded, as a careful client writes it; and a route keyed on one parameter.
        self.assertEqual(self.purge("key=%2Fapi%2Fp%3Fa%3D1%26b%3D2"), (200, {"purged": 1}))
        self.gw.get("/prod/x?id=7&utm=1")
        self.assertEqual(self.purge("key=/prod/x?id=7"), (200, {"purged": 1}))
        self.assertEqual(self.gw.get("/prod/x?id=7")[1]["x-cache"], "MISS")

    def test_a_purge_key_on_a_header_keyed_route_purges_every_value(self):
        up = Upstream()
        gw = Gateway(route("k", "/k", up.port, key='["path", "header:X-Tenant"]'))
        try:
            for tenant in ("t1", "t2"):
                gw.get("/k/p", {"X-Tenant": tenant})
            gw.get("/k/p")
            gw.get("/k/p2", {"X-Tenant": "t1"})  # another path that starts alike
            s, _, body = gw.get("/purge?key=/k/p", method="POST", admin=True, headers=AUTH)
            self.assertEqual(json.loads(body)["purged"], 3)
            self.assertEqual(gw.get("/k/p", {"X-Tenant": "t1"})[1]["x-cache"], "MISS")
            self.assertEqual(gw.get("/k/p2", {"X-Tenant": "t1"})[1]["x-cache"], "HIT")
        finally:
            gw.stop()
            up.stop()

    def test_the_bearer_scheme_is_case_insensitive_and_the_token_is_not(self):
        self.assertEqual(self.purge("prefix=/none", {"Authorization": f"bearer {TOKEN}"})[0], 200)
        self.assertEqual(self.purge("prefix=/none", {"Authorization": f"BEARER {TOKEN}"})[0], 200)
        self.assertEqual(self.purge("prefix=/none",
                                    {"Authorization": f"Bearer {TOKEN.upper()}"})[0], 401)
        self.assertEqual(self.purge("prefix=/none", {"Authorization": f"Bearer {TOKEN}x"})[0], 401)

    def test_sighup_rotates_the_admin_token(self):
        up = Upstream()
        gw = Gateway(route("api", "/api", up.port))
        try:
            with open(gw.config) as f:
                text = f.read()
            with open(gw.config, "w") as f:
                f.write(text.replace(f'admin_token = "{TOKEN}"', 'admin_token = "rotated"'))
            gw.send_signal(signal.SIGHUP)
            new = {"Authorization": "Bearer rotated"}
            post = lambda h: gw.get("/purge?prefix=/x", method="POST", admin=True, headers=h)[0]
            self.assertTrue(eventually(lambda: post(new) == 200))
            self.assertEqual(post(AUTH), 401, "the old token no longer works")
        finally:
            gw.stop()
            up.stop()


class PassThrough(unittest.TestCase):
    def test_a_head_passed_through_says_the_length_a_get_would_have(self):
        up = Upstream()
        gw = Gateway(route("api", "/api", up.port))
        try:
            s, h, body = gw.get("/api/len", method="GET", headers={"Authorization": "Bearer x"})
            s, hh, hbody = gw.get("/api/len", method="HEAD", headers={"Authorization": "Bearer x"})
            self.assertEqual((hh["x-cache"], hbody), ("PASS", b""))
            self.assertEqual(int(hh["content-length"]), len(body) - len(b'"n": 1') + len(b'"n": 2'))
        finally:
            gw.stop()
            up.stop()


    def test_a_client_that_leaves_cancels_its_own_wait_never_a_shared_fetch(self):
        up = Upstream()
        gw = Gateway(route("api", "/api", up.port, timeout='"30s"', max_wait='"30s"'))
        try:
            up.hold("/api/slow-post")
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            s.sendall(b"POST /api/slow-post HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
            self.assertTrue(up.wait_held("/api/slow-post", 1))
            s.close()  # gone before its answer: the gateway stops waiting for it
            self.assertTrue(eventually(lambda: gw.stats()["requests_active"] == 0))
            up.release("/api/slow-post")
            # A coalesced fetch goes on for those still waiting when one of them leaves.
            up.hold("/api/shared")
            leaver = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            leaver.sendall(b"GET /api/shared HTTP/1.1\r\nHost: t\r\n\r\n")
            self.assertTrue(up.wait_held("/api/shared", 1))
            stayer = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            stayer.sendall(b"GET /api/shared HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            self.assertTrue(eventually(lambda: gw.stats()["requests_active"] == 2))
            leaver.close()
            self.assertTrue(eventually(lambda: gw.stats()["requests_active"] == 1))
            up.release("/api/shared")
            answer = b""
            while chunk := stayer.recv(65536):
                answer += chunk
            stayer.close()
            self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer[:80])
            self.assertEqual(up.count("/api/shared"), 1)
        finally:
            gw.stop()
            up.stop()


class Memory(unittest.TestCase):
    def test_what_is_learned_from_answers_stays_within_hints_memory(self):
        up = Upstream()
        gw = Gateway(route("api", "/api", up.port), cache_extra='hints_memory = "64KiB"')
        try:
            pad = "x" * 1500
            targets = [f"/api/private/{i}/{pad}?cc=private" for i in range(1000)]
            targets += [f"/api/varied/{i}/{pad}?vary=X-Lang" for i in range(1000)]
            for i in range(0, len(targets), 100):
                gw.herd(targets[i:i + 100])
            hints = gw.stats()["hints"]
            self.assertLessEqual(hints["bytes"], 64 * 1024)
            self.assertGreater(hints["forgotten"], 0)
            # Remembering still works: a private key seen once passes the next time.
            gw.get("/api/private/last?cc=private")
            self.assertEqual(gw.get("/api/private/last?cc=private")[1]["x-cache"], "PASS")
        finally:
            gw.stop()
            up.stop()


class Loops(unittest.TestCase):
    def test_via_is_sent_upstream_and_a_request_that_comes_back_is_508(self):
        up = Upstream()
        gw = Gateway(route("api", "/api", up.port))
        try:
            gw.get("/api/via")
            seen = json.loads(urllib.request.urlopen(
                f"http://127.0.0.1:{up.port}/__headers").read())[-1]
            self.assertRegex(seen["via"], r"^1\.1 unherd-[0-9a-f]{8}$")
            # Now a route whose upstream is the gateway itself.
            gw.write_config(route("api", "/api", up.port) +
                            route("loop", "/loop", gw.port, retry="{ attempts = 3 }"))
            gw.send_signal(signal.SIGHUP)
            self.assertTrue(eventually(lambda: gw.get("/loop/x")[0] == 508))
            before = gw.stats()["routes"]["loop"]["total_requests"]
            s, h, body = gw.get("/loop/y")
            self.assertEqual(s, 508)
            # One request in, one forwarded to itself, refused there: two, not hundreds.
            self.assertEqual(gw.stats()["routes"]["loop"]["total_requests"] - before, 2)
        finally:
            gw.stop()
            up.stop()


def low_fd_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160))


class Descriptors(unittest.TestCase):
    def test_running_out_of_descriptors_sheds_clients_not_the_upstream(self):
        up = Upstream()
        gw = Gateway(route("api", "/api", up.port, retry="{ attempts = 1 }",
                           breaker='{ window = 2, min_calls = 2, open_for = "1h" }'),
                     cache_extra='store = "none"', preexec_fn=low_fd_limit)
        idle = []
        try:
            keep = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            # Idle clients until the gateway starts closing new ones at once.
            shed = False
            for _ in range(200):
                s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
                idle.append(s)
                s.settimeout(0.5)
                s.sendall(b"")
                if eventually(lambda: gw.stats()["connections_shed"] > 0, timeout=0.01):
                    shed = True
                    break
            self.assertTrue(shed, "clients past the reserve are shed")
            # Fresh keys still reach the upstream on the connection already open.
            for i in range(4):
                keep.sendall(f"GET /api/fd{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                data = b""
                while b"\r\n\r\n" not in data:
                    data += keep.recv(65536)
                self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:200])
            health = json.loads(gw.get("/health", admin=True)[2])
            self.assertEqual(list(health["upstreams"].values()), ["closed"])
        finally:
            for s in idle:
                s.close()
            gw.stop()
            up.stop()


if __name__ == "__main__":
    unittest.main()
