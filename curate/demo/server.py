"""A real HTTP server on loopback that serves the demo corpus, and the URL-list writer."""

from __future__ import annotations

import logging
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from curate.demo.corpus import DemoRow, WebObject

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hostile:
    """A misbehaving response, for tests of the downloader's defences.

    ``kind``: ``drip_head`` (status line and headers one byte per ``interval_s``), ``drip_body``
    (headers, then the ``size``-byte body one byte per ``interval_s``), ``huge`` (``size`` bytes
    generated lazily, with Content-Length), ``huge_unsized`` (the same without Content-Length),
    ``redirect`` (``status`` with ``Location: target``), ``robots`` (``body`` as an image with
    ``X-Robots-Tag: target``), ``banner`` (``status`` with ``target`` as reason phrase, Server
    header and HTML body).
    """

    kind: str
    target: str = ""
    size: int = 1000
    status: int = 302
    interval_s: float = 1.0
    body: bytes = b""


_NOT_FOUND = WebObject("", b"<html><body>404 Not Found</body></html>", "text/html", status=404)


class _Handler(BaseHTTPRequestHandler):
    """Answers GET/HEAD from the server's object dict; silent, keep-alive capable."""

    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections are dropped after this many seconds
    server: _Server

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        with self.server.lock:
            self.server.hits[path] += 1
            self.server.active += 1
            self.server.max_active = max(self.server.max_active, self.server.active)
        try:
            self._answer(path, send_body)
        finally:
            with self.server.lock:
                self.server.active -= 1

    def _answer(self, path: str, send_body: bool) -> None:
        obj = self.server.objects.get(path, _NOT_FOUND)
        if isinstance(obj, Hostile):
            self.close_connection = True
            _HOSTILE[obj.kind](self, obj)
            return
        stopping = self.server.stopping
        if stopping.is_set() or (obj.delay_s > 0 and stopping.wait(obj.delay_s)):
            self.close_connection = True  # server is stopping: hang up without answering
            return
        self.send_response(obj.status)
        self.send_header("Content-Type", obj.content_type)
        self.send_header("Content-Length", str(len(obj.body)))
        self.end_headers()
        if send_body:
            self.wfile.write(obj.body)

    def log_message(self, format: str, *args: object) -> None:
        """Per-request logging is silenced."""


def _drip(handler: _Handler, data: bytes, interval_s: float) -> None:
    for i in range(len(data)):
        if handler.server.stopping.wait(interval_s):
            return
        handler.wfile.write(data[i : i + 1])


def _drip_head(handler: _Handler, obj: Hostile) -> None:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {obj.size}\r\n\r\n"
    _drip(handler, head.encode(), obj.interval_s)


def _drip_body(handler: _Handler, obj: Hostile) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Content-Length", str(obj.size))
    handler.end_headers()
    _drip(handler, b"\xff" * obj.size, obj.interval_s)


def _huge(handler: _Handler, obj: Hostile) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    if obj.kind == "huge":
        handler.send_header("Content-Length", str(obj.size))
    handler.send_header("Connection", "close")
    handler.end_headers()
    chunk = b"\0" * (1 << 20)
    for start in range(0, obj.size, len(chunk)):  # generated as sent, never held whole
        if handler.server.stopping.is_set():
            return
        handler.wfile.write(chunk[: obj.size - start])


def _redirect(handler: _Handler, obj: Hostile) -> None:
    handler.send_response(obj.status)
    handler.send_header("Location", obj.target)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def _robots(handler: _Handler, obj: Hostile) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("X-Robots-Tag", obj.target)
    handler.send_header("Content-Length", str(len(obj.body)))
    handler.end_headers()
    handler.wfile.write(obj.body)


def _banner(handler: _Handler, obj: Hostile) -> None:
    body = f"<html><body><h1>{obj.target}</h1><pre>{obj.target}</pre></body></html>".encode()
    handler.send_response_only(obj.status, obj.target)
    handler.send_header("Server", obj.target)
    handler.send_header("Content-Type", "text/html")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


_HOSTILE = {
    "drip_head": _drip_head,
    "drip_body": _drip_body,
    "huge": _huge,
    "huge_unsized": _huge,
    "redirect": _redirect,
    "robots": _robots,
    "banner": _banner,
}


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with daemon handler threads and a deep accept queue."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], objects: dict[str, WebObject | Hostile]) -> None:
        self.objects = objects
        self.hits: Counter[str] = Counter()  # requests received per path
        self.active = self.max_active = 0  # requests being answered now, and the most at once
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        """Client hang-ups are normal (timeouts, stop()); anything else goes to the log."""
        if isinstance(sys.exc_info()[1], OSError):  # ConnectionError, TimeoutError, ...
            return
        log.warning("demo server error for %s", client_address, exc_info=True)


class LoopbackServer:
    """Serves a dict of WebObject (or Hostile) on 127.0.0.1 on a free port, in a background thread."""

    def __init__(self, objects: dict[str, WebObject | Hostile], host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server((host, port), objects)
        self._thread: threading.Thread | None = None

    @property
    def hits(self) -> Counter[str]:
        """How many requests each path received (a copy)."""
        with self._server.lock:
            return Counter(self._server.hits)

    @property
    def max_active(self) -> int:
        """The most requests answered at once since the server started."""
        return self._server.max_active

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the bound socket."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        """Absolute URL for an object path such as ``/img/000123.jpg``."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def start(self) -> LoopbackServer:
        """Start serving in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="curate-demo-server",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; returns promptly even during slow requests."""
        self._server.stopping.set()  # wakes handlers sleeping on a delay
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=2)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def previous_port(url_list: str | Path) -> int:
    """The port of an earlier demo's URL list (so a second demo serves the same URLs and resumes its
    run), or 0 (any free port) when there is none."""
    path = Path(url_list)
    if not path.is_file():
        return 0
    urls = pq.read_table(path, columns=["url"]).column("url")
    return (urlsplit(urls[0].as_py()).port or 0) if len(urls) else 0


def write_url_list(rows: list[DemoRow], base_url: str, path: str | Path) -> Path:
    """Write the URL list as Parquet with columns url, caption, defect, expected_reason (in row order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = base_url.rstrip("/")
    table = pa.table(
        {
            "url": pa.array([base + r.path for r in rows], pa.string()),
            "caption": pa.array([r.caption for r in rows], pa.string()),
            "defect": pa.array([r.defect for r in rows], pa.string()),
            "expected_reason": pa.array([r.expected_reason for r in rows], pa.string()),
        }
    )
    pq.write_table(table, path)
    return path
