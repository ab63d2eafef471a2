"""A tiny HTTP server on 127.0.0.1 for the download / acquire tests (no network needed).

Each route is a :class:`Route`: the bytes to serve plus misbehaviours a real mirror shows
(cut the connection after N bytes for the first K requests, answer 404, answer 503 K times).
Range requests (``bytes=N-``) get 206 with Content-Range, honouring ``If-Range`` against the ETag,
as RFC 9110 14.2 / 13.1.5 say; every request's headers are recorded for the assertions.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Optional


@dataclasses.dataclass
class Route:
    body: bytes = b""
    status: int = 200                 # e.g. 404: always answer this error
    cut_after: Optional[int] = None   # send only this many body bytes, then drop the connection ...
    cut_times: int = 0                # ... for this many requests
    fail_503_times: int = 0           # answer 503 this many times first
    ranges: bool = True               # honour Range requests

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.requests.append((self.path, dict(self.headers)))
            route = srv.routes.get(self.path)
            if route is not None and route.fail_503_times > 0:
                route.fail_503_times -= 1
                self.send_error(503, "busy")
                return
            cut = None
            if route is not None and route.cut_after is not None and route.cut_times > 0:
                route.cut_times -= 1
                cut = route.cut_after
        if route is None or route.status != 200:
            self.send_error(404 if route is None else route.status)
            return
        body, start = route.body, 0
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        use_range = route.ranges and rng and (if_range is None or if_range == route.etag)
        if use_range:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            start = int(m.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("ETag", route.etag)
        if route.ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if cut is not None:
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True  # the client sees EOF before Content-Length bytes
            return
        self.wfile.write(payload)


@contextlib.contextmanager
def serve(routes: dict[str, Route]) -> Iterator[ThreadingHTTPServer]:
    """Run the server in a thread; ``server.url(path)`` gives the URL, ``server.requests`` the log."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.routes = routes
    httpd.requests = []
    httpd.lock = threading.Lock()
    httpd.url = lambda path: f"http://127.0.0.1:{httpd.server_address[1]}{path}"
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(timeout=5)
