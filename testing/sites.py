"""Loopback stand-ins for the web sources: a gallery with every markup variant, the Openverse
and MediaWiki APIs in their documented response shapes, and a few hostile answers.

One threaded HTTP server on 127.0.0.1 serves all of them from memory and logs
every request (path, query and headers), so tests can check what a crawler asked for.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from PIL import Image

from pipeline.config.params import Params, load_params
from pipeline.contracts.raw import read_manifest
from pipeline.stages.scrape import scrape
from testing.project import REPO


def jpeg(seed: int, size: int = 96) -> bytes:
    """A small distinct JPEG: a colour field with a seed-dependent square."""
    img = Image.new("RGB", (size, size), ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256))
    for x in range(seed % 40, seed % 40 + 30):
        for y in range(10, 40):
            img.putpixel((x, y), (255 - (seed * 7) % 256, 0, 0))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False
    close_delimited: bool = False  # no length, no chunks: the body ends when the connection does


@dataclass
class Logged:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    routes: dict[str, Any]
    log: list[Logged]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        self.server.log.append(Logged(parts.path, query, dict(self.headers.items())))
        route = self.server.routes.get(parts.path)
        answer = route(query, self.headers) if callable(route) else route
        if answer is None:
            answer = Answer(404, b"not found", {"Content-Type": "text/plain"})
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if answer.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            step = 1 << 20
            try:
                for start in range(0, len(answer.body), step):
                    chunk = answer.body[start:start + step]
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        if answer.close_delimited:
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for start in range(0, len(answer.body), 1 << 16):
                    self.wfile.write(answer.body[start:start + (1 << 16)])
            return
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(answer.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class LoopbackSite:
    """``routes`` maps a path to an :class:`Answer` or to ``f(query, headers) -> Answer``."""

    def __init__(self, routes: dict[str, Any] | None = None) -> None:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.routes = routes or {}
        self._httpd.log = []
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def routes(self) -> dict[str, Any]:
        return self._httpd.routes

    @property
    def log(self) -> list[Logged]:
        return self._httpd.log

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"

    def paths(self) -> list[str]:
        return [entry.path for entry in self.log]

    def __enter__(self) -> LoopbackSite:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def image(seed: int, **headers: str) -> Answer:
    return Answer(200, jpeg(seed), {"Content-Type": "image/jpeg", **headers})


def html(text: str, **headers: str) -> Answer:
    return Answer(200, text.encode(), {"Content-Type": "text/html; charset=utf-8", **headers})


def as_json(data: Any) -> Answer:
    return Answer(200, json.dumps(data).encode(), {"Content-Type": "application/json"})


def params_with(sources: dict[str, Any], site: LoopbackSite, tmp_path: Path,
                **crawl: Any) -> Params:
    """The repository's params with only ``sources``, politeness delays off, and the
    stand-in's address allowed (it is on loopback, as no real source is)."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["scrape"]["demo_site"] = False
    data["scrape"]["sources"] = sources
    data["scrape"]["crawl"].update({
        "autothrottle": False, "download_timeout_s": 10.0, "progress_every_s": 1.0,
        "max_bytes": 10 * 1024 * 1024, "allow_private_hosts": [site.host_port],
        "contact": "crawler-owner@example.org", "job_dir": None, **crawl})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_params(path)


def run_scrape(params: Params, tmp_path: Path):
    raw = tmp_path / "raw"
    report = scrape(params.scrape, params.demo_site, raw, tmp_path / "reports", tmp_path / "site")
    return report, {r.url: r for r in read_manifest(raw)}
