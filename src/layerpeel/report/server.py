"""The live dashboard: a small local HTTP server whose page follows a run as its files grow.

`GET /` is the report page in live mode; its script polls `GET /data.json?rev=N`, which answers
204 while nothing changed and the new page data otherwise. Each poll reads only what was appended
since the last one (`RunReader`), never a half-written line, so a run being written, torn or
resumed never breaks the page. Binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from layerpeel.errors import LayerpeelError
from layerpeel.report.html import render_html
from layerpeel.report.payload import build_payload
from layerpeel.report.results import RunReader

log = logging.getLogger(__name__)


class Dashboard:
    """Serves one run folder; `serve_forever()` blocks, `start()` runs it in a daemon thread."""

    def __init__(self, run: str | Path, host: str = "127.0.0.1", port: int = 8765) -> None:
        self.run = Path(run)
        if not self.run.is_dir():
            raise LayerpeelError(f"run folder not found: {self.run}")
        if not 0 <= port <= 65535:
            raise LayerpeelError(f"--port must be in 0..65535, got {port}")
        self.reader = RunReader(self.run)
        self._lock = threading.Lock()
        self._payload: dict[str, Any] | None = None
        self._payload_rev = -1
        try:
            self.server = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise LayerpeelError(
                    f"port {port} on {host} is already in use; choose another with --port "
                    "(--port 0 picks a free one)"
                ) from None
            raise LayerpeelError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def snapshot(self) -> tuple[int, dict[str, Any]]:
        """The current revision and page data, re-read only when a file changed."""
        with self._lock:
            self.reader.refresh()
            if self._payload is None or self._payload_rev != self.reader.revision:
                self._payload = build_payload(self.reader.results(), live=True)
                self._payload_rev = self.reader.revision
            return self._payload_rev, self._payload

    def serve_forever(self) -> None:
        self.server.serve_forever(poll_interval=0.2)

    def start(self) -> Dashboard:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join()
        self.server.server_close()


def _handler(dash: Dashboard) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "layerpeel"

        def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
            url = urlparse(self.path)
            try:
                if url.path in ("/", "/index.html"):
                    rev, payload = dash.snapshot()
                    page = render_html({**payload, "revision": rev})
                    self._send(200, "text/html; charset=utf-8", page.encode())
                elif url.path == "/data.json":
                    seen = parse_qs(url.query).get("rev", ["-1"])[0]
                    rev, payload = dash.snapshot()
                    if seen == str(rev):
                        self._send(204, None, b"")
                    else:
                        body = json.dumps({"revision": rev, "data": payload}).encode()
                        self._send(200, "application/json", body)
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            except Exception:  # noqa: BLE001 - a failed read must never stop the dashboard
                log.exception("dashboard request %s failed", self.path)
                try:
                    self._send(500, "text/plain; charset=utf-8", b"could not read the run\n")
                except OSError:
                    pass

        def _send(self, code: int, kind: str | None, body: bytes) -> None:
            self.send_response(code)
            if kind:
                self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
            log.debug("%s " + format, self.address_string(), *args)

    return Handler
