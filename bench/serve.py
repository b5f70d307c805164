"""Benchmark of `happysad serve-model`: throughput and latency under load, start-up, and swap.

The model is params.yaml's own network at its own image size (random weights, saved and
exported by the save stage's code, as in bench.predict); the images are 200 demo faces as
256 px JPEGs. Side by side in one run, on this machine:

- the floor: a plain loop in one process over the same 200 images, each through the same
  checks, resize and face detector as the service, then the LiteRT interpreter (batch 1);
- `happysad predict` on the 200 files: one process, from its start to its last line;
- the service (a `serve-model` subprocess on loopback) at 1, 8 and 32 concurrent clients, each
  sending one image per TF Serving request (`{"instances": [{"b64": ...}]}`) over a kept-alive
  connection, every client a small asyncio socket loop (little CPU of its own): images/s, and
  p50 / p99 latency from the request's first byte to its answer's last;
- time from starting `serve-model` to its first answer, and from a promotion (the promote
  tool's swap of models/production) to the first answer from the new model, at params.yaml's
  serve_model.poll_s and serve_model.settle_polls.

Targets (issue 30): p99 <= 100 ms at 8 clients; throughput >= 80% of the plain loop.

Run: ``uv run python -m bench.serve [--requests N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import print_table
from bench.predict import _model_dir
from testing.serving import ServeModel

Row = tuple[str, str, str]
REPO = Path(__file__).resolve().parents[1]
PATH = "/v1/models/happysad:predict"


def _images(out: Path, count: int) -> list[Path]:
    """``count`` demo faces, happy and sad, each a 256 px JPEG."""
    from demo.faces import draw_face

    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        face = draw_face(rng, ("happy", "sad")[i % 2]).convert("RGB").resize((256, 256))
        path = out / f"face-{i:03d}.jpg"
        face.save(path, quality=90)
        paths.append(path)
    return paths


def _floor(model_dir: Path, images: list[Path], faces: bool = False) -> float:
    """Images per second of a plain loop: checks, resize (and the face detector with
    ``faces``), LiteRT at batch 1."""
    from pipeline.config.params import load_params
    from pipeline.ml.labeller import Labeller

    params = load_params(REPO / "params.yaml")
    labeller = Labeller.load(model_dir, params.clean, params.faces if faces else None,
                             runtime="litert")
    data = [p.read_bytes() for p in images]
    labeller.probabilities([labeller.views(data[0])])  # warm: not timed
    started = time.perf_counter()
    for one in data:
        labeller.probabilities([labeller.views(one)])
    return len(data) / (time.perf_counter() - started)


def _predict_cli(model_dir: Path, images: list[Path]) -> float:
    """Images per second of one `happysad predict` process over the files, start included."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline", "predict", "--model-dir", str(model_dir),
                           *map(str, images)], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.count("\n") == len(images), done.stderr
    return len(images) / (time.perf_counter() - started)


def _request(body: bytes) -> bytes:
    return (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
                    ) -> tuple[int, dict[str, str], bytes]:
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def _load(port: int, requests: list[bytes], clients: int, total: int) -> tuple[float, list[float]]:
    """``total`` requests from ``clients`` connections at once: (seconds, each one's latency)."""
    latencies: list[float] = []
    sent = iter(range(total))

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for index in sent:
            start = time.perf_counter()
            status, _, body = await _exchange(reader, writer, requests[index % len(requests)])
            latencies.append(time.perf_counter() - start)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started, latencies


async def _version_answering(port: int, request: bytes) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        status, headers, _ = await _exchange(reader, writer, request)
        return headers.get("x-model-version", "") if status == 200 else ""
    finally:
        writer.close()


def _first_answer_s(server: ServeModel, request: bytes) -> float:
    """Seconds from the server's launch to its first answer to a predict request."""
    while True:
        try:
            if asyncio.run(_version_answering(server.port or 0, request)):
                return time.perf_counter() - server.started
        except OSError:
            pass
        time.sleep(0.01)


def _swap_s(server: ServeModel, production: Path, challenger: Path, request: bytes) -> float:
    """Seconds from the promote tool's swap to the first answer from the new model."""
    from pipeline.tools.promote import _swap_in

    old = asyncio.run(_version_answering(server.port or 0, request))
    started = time.perf_counter()
    _swap_in(challenger, production)
    while asyncio.run(_version_answering(server.port or 0, request)) == old:
        time.sleep(0.01)
    return time.perf_counter() - started


def _served(production: Path, challenger: Path, requests: list[bytes], total: int):
    """serve-model's start to first answer, its load at 1, 8 and 32 clients, promotion to
    first answer from the new model, and the load at 8 clients with --face-found."""
    server = ServeModel(["--model-dir", str(production)], REPO)
    try:
        first = _first_answer_s(server, requests[0])
        asyncio.run(_load(server.port or 0, requests, 2, 20))  # warm: not counted
        load = {n: asyncio.run(_load(server.port or 0, requests, n, max(total, 4 * n))) for n in (1, 8, 32)}
        swap = _swap_s(server, production, challenger, requests[0])
    finally:
        server.stop()
    server = ServeModel(["--model-dir", str(production), "--face-found"], REPO)
    try:
        asyncio.run(_load(server.port or 0, requests, 2, 10))
        faces = asyncio.run(_load(server.port or 0, requests, 8, 200))
    finally:
        server.stop()
    return first, load, swap, faces


def rows(work: Path, total: int) -> list[Row]:
    from pipeline.tools.promote import _swap_in

    model_dir = _model_dir(work / "model")
    card = json.loads((model_dir / "model_card.json").read_text())
    card["date"] = "2026-01-01T00:00:00+00:00"
    (model_dir / "model_card.json").write_text(json.dumps(card))
    (model_dir / "model_card.md").write_text("a benchmark's model\n")
    _swap_in(model_dir, work / "production")
    challenger = work / "challenger"
    _swap_in(model_dir, challenger)
    card["date"] = "2026-01-02T00:00:00+00:00"
    (challenger / "model_card.json").write_text(json.dumps(card))
    images = _images(work / "images", 200)
    requests = [_request(json.dumps({"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()}]})
                         .encode()) for p in images]

    floor = _floor(model_dir, images)
    floor_faces = _floor(model_dir, images[:100], faces=True)
    cli = _predict_cli(model_dir, images)
    first, load, swap, faces = _served(work / "production", challenger, requests, total)
    floor_again = _floor(model_dir, images)  # the machine may have changed meanwhile
    floor = (floor + floor_again) / 2
    out = [("plain LiteRT loop (the floor)", f"{floor:.1f} img/s",
            f"batch 1, the same checks and resize; {floor_again:.1f} after the load"),
           ("the same loop with the face detector", f"{floor_faces:.1f} img/s",
            "params.yaml's faces (what face_found costs a model that cuts no faces)"),
           ("happysad predict, 200 files", f"{cli:.1f} img/s",
            f"{cli / floor_faces:.0%} of the loop with the detector (predict always detects); "
            "one process, start included")]

    def figures(clients: int, seconds: float, latencies: list[float], floor: float, of: str) -> str:
        rate = len(latencies) / seconds
        p50, p99 = np.percentile(latencies, [50, 99]) * 1000
        target = "; target p99 <= 100 ms" if clients == 8 else ""
        return (f"{rate / floor:.0%} of {of} (target >= 80%); p50 {p50:.0f} ms, p99 {p99:.0f} ms"
                f"{target}; {len(latencies)} requests"), f"{rate:.1f} img/s"

    for clients, (seconds, latencies) in load.items():
        note, value = figures(clients, seconds, latencies, floor, "the floor")
        out.append((f"serve-model, {clients} client{'s' * (clients > 1)}", value, note))
    note, value = figures(8, *faces, floor_faces, "the loop with the detector")
    out.append(("serve-model --face-found, 8 clients", value, note))
    out += [("start to first answer", f"{first:.2f} s", "a new serve-model process, LiteRT"),
            ("promotion to first answer from the new model", f"{swap:.2f} s",
             "serve_model.poll_s x (serve_model.settle_polls + 1) at most, plus the load")]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per load level")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="happysad-bench-serve-") as work:
        print_table(f"happysad serve-model ({args.requests} single-image requests per level, "
                    f"{datetime.date.today()})", rows(Path(work), args.requests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
