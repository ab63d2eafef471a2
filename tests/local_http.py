"""A tiny HTTP server on 127.0.0.1 for the download / acquire tests (no network needed).

Each route is a :class:`Route`: the bytes to serve plus misbehaviours a real mirror shows:
cut the connection after N bytes for the first K requests (the body is then shorter than the
Content-Length sent), answer 404 or 503, answer with an HTML page, serve a file that changes between
requests (``next_bodies``), with a strong, weak or no ETag, with a Last-Modified date, ignore Range
(200 for a range request), honour Range but ignore If-Range, answer 206 with a wrong Content-Range,
or trickle the body slowly. Range requests (``bytes=N-``) otherwise get 206 with Content-Range,
honouring ``If-Range`` against the ETag or the Last-Modified date, as RFC 9110 14.2 / 13.1.5 say;
every request's headers are recorded for the assertions.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Optional


@dataclasses.dataclass
class Route:
    body: bytes = b""
    status: int = 200                 # e.g. 404: always answer this error
    cut_after: Optional[int] = None   # send only this many body bytes, then drop the connection ...
    cut_times: int = 0                # ... for this many requests
    fail_503_times: int = 0           # answer 503 this many times first
    ranges: bool = True               # honour Range requests (False: answer 200 with the whole body)
    etag_kind: str = "strong"         # strong | weak (W/"...") | none (no ETag header)
    last_modified: Optional[str] = None  # Last-Modified header value (HTTP-date), if any
    content_type: str = "application/octet-stream"
    if_range: bool = True             # False: honour Range even when If-Range does not match (a broken server)
    content_range_shift: int = 0      # 206: claim a Content-Range start this many bytes off the real one
    next_bodies: list = dataclasses.field(default_factory=list)  # after each request, serve the next of these
    trickle_s: Optional[float] = None  # send the body one byte per this many seconds ...
    trickle_max: int = 400            # ... for at most this many bytes, then stop (ends the handler)

    @property
    def etag(self) -> Optional[str]:
        tag = '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'
        return None if self.etag_kind == "none" else "W/" + tag if self.etag_kind == "weak" else tag


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
            if route is not None:
                body, etag = route.body, route.etag  # this request's version of the file
                if route.next_bodies:
                    route.body = route.next_bodies.pop(0)
        if route is None or route.status != 200:
            self.send_error(404 if route is None else route.status)
            return
        start = 0
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        current = etag if etag is not None else route.last_modified
        use_range = route.ranges and rng and (if_range is None or not route.if_range or if_range == current)
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
            claimed = start + route.content_range_shift
            self.send_header("Content-Range", f"bytes {claimed}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Content-Type", route.content_type)
        if etag is not None:
            self.send_header("ETag", etag)
        if route.last_modified is not None:
            self.send_header("Last-Modified", route.last_modified)
        if route.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if cut is not None or route.trickle_s is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if route.trickle_s is not None:
            try:
                for i in range(min(len(payload), route.trickle_max)):
                    self.wfile.write(payload[i:i + 1])
                    self.wfile.flush()
                    time.sleep(route.trickle_s)
            except OSError:  # the client gave up (its deadline): nothing more to send
                pass
            self.close_connection = True
            return
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
