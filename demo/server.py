"""A loopback HTTP server for a generated demo site, misbehaving where routes.json says so."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)


class _Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as crawlers expect of real sites
    server: _DemoHTTPServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = urlsplit(self.path).path
        self.server.requests.append(path)
        route = self.server.routes.get(path, {})
        if "delay_s" in route:
            time.sleep(float(route["delay_s"]))
        if "status" in route:
            self.send_error(int(route["status"]))
            return
        if "redirect" in route:
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", str(route["redirect"]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        logger.debug("%s " + format, self.address_string(), *args)


class _DemoHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops connections from any crawler with
    # more than 5 in flight, and each dropped SYN costs a 1 s retransmit.
    request_queue_size = 128
    requests: list[str]
    routes: dict[str, dict[str, object]]

    def handle_error(self, request: object, client_address: tuple) -> None:
        """A crawler that went away mid-request (killed, timed out) is a line in the debug log,
        not socketserver's traceback on stderr."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            logger.debug("%s went away: %s", client_address[0], error)
            return
        super().handle_error(request, client_address)


class DemoSiteServer:
    """Serve ``site_dir/www`` on 127.0.0.1 in a background thread; use as a context manager.

    ``requests`` lists every path asked for, so tests can check what a crawler fetched.
    """

    def __init__(self, site_dir: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        site_dir = Path(site_dir)
        handler = partial(_Handler, directory=str(site_dir / "www"))
        self._httpd = _DemoHTTPServer((host, port), handler)
        self._httpd.requests = []
        routes_file = site_dir / "routes.json"
        self._httpd.routes = json.loads(routes_file.read_text()) if routes_file.exists() else {}
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name="demo-site")

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[str]:
        return self._httpd.requests

    def start(self) -> DemoSiteServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> DemoSiteServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
