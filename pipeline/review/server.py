"""The review page's server: the data as the clean stage last saw it, most suspect first, and
each decision appended to ``data/review/decisions.jsonl`` at once (``happysad review``,
``pipeline/tools/review.py``, starts it). Safe by construction: it listens on loopback only;
images are served by sha256 from the index built at start (no path from a request reaches the
filesystem); a POST must come from the page's own origin and carry the token issued with the
page; request bodies are bounded.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from pipeline.contracts import decisions as decision_log
from pipeline.contracts.suspects import SUSPECT_FLAGS
from pipeline.runtime.errors import UserError
from pipeline.runtime.files import describe_os_error

logger = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("page.html")
MAX_BODY = 256 * 1024  # bytes of one POST
MAX_DECISIONS = 2000  # in one POST
SHA = re.compile(r"[0-9a-f]{64}")
THUMB_PX = 160
THUMBS_KEPT = 4000  # thumbnails kept in memory (about 6 KB each)


@dataclass
class Store:
    """Everything the page shows, indexed at start; decisions kept in step with the file."""

    raw: Path
    decisions_path: Path
    classes: list[str]
    kept: list[dict]  # suspects order: most suspect first
    rejected: list[dict]
    files: dict[str, Path]  # sha256 -> file under raw (the only paths ever opened)
    standing: dict[str, decision_log.Decision]
    lock: threading.Lock = field(default_factory=threading.Lock)
    thumbs: dict[str, bytes] = field(default_factory=dict)


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    except ValueError as err:
        raise UserError(f"{path}: not JSON lines ({err}); rerun the stage that writes it") from None


def load_store(clean: Path, raw: Path, suspects: Path, decisions_path: Path) -> Store:
    """The index: kept images in suspects order (or clean's, before any suspects run)."""
    kept = _jsonl(clean / "images.jsonl")
    if not kept:
        raise UserError(f"{clean / 'images.jsonl'}: not found or empty; run the clean stage "
                        "first (dvc repro clean)")
    ranked = {r["sha256"]: r for r in _jsonl(suspects)}
    rows = [{"sha256": r["sha256"], "class": r["label"], "group": r.get("group"),
             "group_size": r.get("group_size", 1), "split": ranked.get(r["sha256"], {}).get("split", ""),
             "flags": ranked.get(r["sha256"], {}).get("flags", []),
             "score": ranked.get(r["sha256"], {}).get("score", 0.0),
             "probability": ranked.get(r["sha256"], {}).get("probability_of_class")} for r in kept]
    rows.sort(key=lambda r: -r["score"])
    left_out = _jsonl(clean / "rejected.jsonl")
    rejected = [{"sha256": r["sha256"], "class": r["label"], "reason": r["reason"],
                 "detail": r.get("detail", ""), "of": r.get("of"), "group": r.get("group")}
                for r in left_out]
    files = {r["sha256"]: raw / r["file"] for r in [*kept, *left_out]}
    return Store(raw, decisions_path, sorted({r["class"] for r in rows}), rows, rejected, files,
                 decision_log.standing(decision_log.read(decisions_path)))


def _with_decision(store: Store, row: dict) -> dict:
    decision = store.standing.get(row["sha256"])
    return {**row, "decision": None if decision is None else
            {"action": decision.action, "label": decision.label, "note": decision.note}}


def items(store: Store, query: dict[str, str]) -> dict:
    """One page of the kept (or rejected, or one group's) images that pass the filters."""
    rows = store.rejected if query.get("view") == "rejected" else store.kept
    if query.get("group"):  # a near-duplicate group: the kept image and the copies clean folded in
        rows = [r for r in store.kept + store.rejected if r.get("group") == query["group"]]
    if query.get("class"):
        rows = [r for r in rows if r["class"] == query["class"]]
    if query.get("flag"):
        rows = [r for r in rows if query["flag"] in r.get("flags", ()) or
                r.get("reason") == query["flag"]]
    if query.get("reviewed") in ("yes", "no"):
        wanted = query["reviewed"] == "yes"
        rows = [r for r in rows if (r["sha256"] in store.standing) == wanted]
    per_page = max(1, min(int(query.get("per_page") or 60), 500))
    pages = max(1, -(-len(rows) // per_page))
    page = max(1, min(int(query.get("page") or 1), pages))
    shown = rows[(page - 1) * per_page:page * per_page]
    return {"total": len(rows), "page": page, "pages": pages, "per_page": per_page,
            "items": [_with_decision(store, r) for r in shown]}


def summary(store: Store) -> dict:
    reviewed = sum(1 for r in store.kept if r["sha256"] in store.standing)
    return {"classes": store.classes, "flags": list(SUSPECT_FLAGS), "kept": len(store.kept),
            "rejected": len(store.rejected), "reviewed": reviewed,
            "reasons": sorted({r["reason"] for r in store.rejected})}


def decide(store: Store, body: dict) -> dict:
    """Validate and append a POST's decisions; the standing decision of each image after it."""
    wanted = body.get("decisions") if isinstance(body, dict) else None
    if not isinstance(wanted, list) or not 0 < len(wanted) <= MAX_DECISIONS:
        raise ValueError(f"give 1 to {MAX_DECISIONS} decisions")
    made = []
    for entry in wanted:
        sha, action = str(entry.get("sha256", "")), str(entry.get("action", ""))
        if sha not in store.files or action not in decision_log.ACTIONS:
            raise ValueError(f"unknown image or action: {sha[:12]!r} {action!r}")
        label = str(entry.get("label") or "")
        if action == "relabel" and label not in store.classes:
            raise ValueError(f"relabel to one of {store.classes}")
        note = str(entry.get("note") or "")[:500]
        # A group's confirmed copies (rejected as near duplicates) go where it goes, or the
        # next clean would find the group across two classes.
        made += [decision_log.Decision(s, action, label, decision_log.now(), note)
                 for s in _copies(store, sha)]
    with store.lock:
        decision_log.append(store.decisions_path, made)
        store.standing = decision_log.standing(decision_log.read(store.decisions_path))
        return {d.sha256: _with_decision(store, {"sha256": d.sha256})["decision"] for d in made}


def _copies(store: Store, sha: str) -> list[str]:
    """``sha`` and, for a kept image, the near duplicates clean folded into its group."""
    group = next((r["group"] for r in store.kept if r["sha256"] == sha), None)
    return [sha, *sorted({r["sha256"] for r in store.rejected if group and r["group"] == group
                          and r["reason"] == "near_duplicate" and r["sha256"] != sha})]


def thumbnail(store: Store, sha: str) -> bytes | None:
    """A small JPEG of a known image (None for an unknown sha256 or an unreadable file)."""
    from PIL import Image, UnidentifiedImageError

    path = store.files.get(sha) if SHA.fullmatch(sha) else None
    if path is None:
        return None
    if sha not in store.thumbs:
        try:
            with Image.open(path) as img:
                img.draft("RGB", (THUMB_PX, THUMB_PX))
                img = img.convert("RGB")
                img.thumbnail((THUMB_PX, THUMB_PX))
                out = io.BytesIO()
                img.save(out, "JPEG", quality=80)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            return None
        if len(store.thumbs) >= THUMBS_KEPT:
            store.thumbs.pop(next(iter(store.thumbs)))  # the oldest: memory stays bounded
        store.thumbs[sha] = out.getvalue()
    return store.thumbs[sha]


class ReviewHandler(BaseHTTPRequestHandler):
    """The page, its API and the thumbnails; ``store``, ``token``, ``origin`` and ``hosts`` are
    set per server by :func:`serve`."""

    store: Store
    token: str
    origin: str
    hosts: frozenset[str]
    server_version = "happysad-review"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        logger.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, kind: str, extra: dict | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": kind, "Content-Length": str(len(body)),
                           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
                           "Referrer-Policy": "no-referrer", **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: object) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _refused(self, status: int, why: str) -> None:
        logger.warning("review: refused %s %s: %s", self.command, self.path[:80], why)
        self._json(status, {"error": why})

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.headers.get("Host") not in self.hosts:
            return self._refused(403, "unknown Host (only this machine's page may call)")
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/":
            return self._page()
        if url.path == "/favicon.ico":
            return self._send(204, b"", "image/x-icon")
        if url.path == "/api/summary":
            return self._json(200, summary(self.store))
        if url.path == "/api/items":
            try:
                return self._json(200, items(self.store, query))
            except ValueError:
                return self._refused(400, "page and per_page are numbers")
        if url.path.startswith("/thumb/"):
            data = thumbnail(self.store, url.path.removeprefix("/thumb/"))
            if data is None:
                return self._refused(404, "no such image")
            return self._send(200, data, "image/jpeg", {"Cache-Control": "max-age=3600"})
        return self._refused(404, "not found")

    def _page(self) -> None:
        nonce = secrets.token_urlsafe(12)
        html = PAGE.read_text(encoding="utf-8").replace("{{TOKEN}}", self.token).replace(
            "{{NONCE}}", nonce)
        self._send(200, html.encode(), "text/html; charset=utf-8", {
            "Content-Security-Policy": f"default-src 'self'; img-src 'self'; style-src "
            f"'self' 'nonce-{nonce}'; script-src 'nonce-{nonce}'; frame-ancestors 'none'"})

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        if self.headers.get("Host") not in self.hosts or self.headers.get("Origin") != self.origin:
            return self._refused(403, "only the review page itself may post")
        if not hmac.compare_digest(self.headers.get("X-Review-Token", ""), self.token):
            return self._refused(403, "missing or wrong token")
        if urlsplit(self.path).path != "/api/decisions":
            return self._refused(404, "not found")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._refused(411, "a length is required")
        if not 0 < length <= MAX_BODY:
            return self._refused(413, f"a body of 1 to {MAX_BODY} bytes")
        try:
            return self._json(200, {"standing": decide(self.store, json.loads(self.rfile.read(length)))})
        except (ValueError, AttributeError, TypeError) as err:
            return self._refused(400, str(err)[:200])
        except UserError as err:  # the decisions file itself is broken (a hand edit): say it
            return self._refused(500, str(err)[:400])
        except OSError as err:  # a full disk, a read-only folder
            return self._refused(500, describe_os_error(err)[:400])


def serve(store: Store, port: int = 0) -> ThreadingHTTPServer:
    """The review server on 127.0.0.1 (``port`` 0: any free one); call serve_forever()."""
    server = ThreadingHTTPServer(("127.0.0.1", port), BaseHTTPRequestHandler)
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    host = origin.removeprefix("http://")
    server.RequestHandlerClass = type("Handler", (ReviewHandler,), {
        "store": store, "token": secrets.token_urlsafe(24), "origin": origin,
        "hosts": frozenset({host, host.replace("127.0.0.1", "localhost")})})
    server.daemon_threads = True
    return server
