"""happysad serve-model: the production model behind HTTP, TF Serving's REST API included.

``happysad serve-model [--port 8501] [--model-dir models/production]`` answers on 127.0.0.1
(``--host 0.0.0.0`` to expose it):

- ``POST /v1/models/happysad:predict`` with ``{"instances": [{"b64": "<image file, base64>"}]}``
  (TF Serving's row format; columnar ``{"inputs": ...}`` too) -> ``{"predictions": [{"label",
  "probability", "scores", "face_found"}]}``; ``GET /v1/models/happysad`` and ``.../metadata``
  are TF Serving's model status and metadata;
- ``POST /predict`` with image files as a multipart form (``curl -F image=@photo.jpg``) ->
  ``happysad predict``'s JSON lines as a list;
- ``GET /health``, ``GET /metrics`` (Prometheus text).

It runs the LiteRT export (no TensorFlow), labels as ``happysad predict`` does (the model
card's threshold, class names and face crop; the clean stage's checks; ``face_found`` only with
``--face-found`` or ``--require-face``, as the detector costs more than the model), groups concurrent
images into one model call (params.yaml's ``serve_model`` section), and picks up a new model in the
folder (a promotion, a ``dvc pull``) by itself, without dropping a request. Every answer's
``X-Model-Version`` header says which model made it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import time
from functools import partial
from pathlib import Path

from pipeline.config.loader import load_sections
from pipeline.config.serve_model import ServeModelParams
from pipeline.runtime.errors import UserError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, default=Path("models/production"),
                        help="the model to serve, watched for a new one (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=8501,
                        help="port (default: %(default)s, TF Serving's REST port; 0: any free one)")
    parser.add_argument("--face-found", action="store_true",
                        help="say in each answer whether a face was found, with the face "
                             "finder of the model's card (for a model that cuts no faces itself, it costs "
                             "more than the model: ~40 ms an image on 2 cores; without it "
                             "face_found is null)")
    parser.add_argument("--require-face", action="store_true",
                        help="no label for an image where no face is found (label null, with "
                             "the reason in `abstained`; implies --face-found)")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line error (a port in use, an address not of this host)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are
        # TCP, and without it every answer waits ~40 ms for a delayed ACK (Nagle)
        sock = socket.socket(info[0], socket.SOCK_STREAM, info[2] or socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(2048)
    except OSError as err:
        raise UserError(f"{host}:{port}: cannot listen ({err.strerror or err}); pass another "
                        "--port, or 0 for any free one") from None
    sock.setblocking(False)
    return sock


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be between 0 and 65535")
    params = load_sections(args.params, serve_model=ServeModelParams)  # the service's own settings only:
    # what the model accepts and how it finds faces come from its card
    from pipeline.ml.labeller import params_rules
    from pipeline.serving.models import load_model

    load = partial(load_model, args.model_dir, args.face_found, args.require_face,
                   params_rules(args.params))
    first = load()
    sock = listen(args.host, args.port)

    import uvicorn

    if not args.verbose:  # its start-up and shutdown notices: the one line below says it all
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)

    from pipeline.serving.app import MODEL_NAME, build_app
    from pipeline.serving.connections import (
        Refusals,
        connection_cap,
        guarded_protocol,
        quiet_accept_errors,
    )

    app = build_app(args.model_dir, params.serve_model, first, load)
    cap = connection_cap(params.serve_model.max_connections)
    refusals = Refusals(cap, params.serve_model.read_timeout_s)
    quiet_accept_errors()
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    logger.info("serve-model: version %d of %s on %s/v1/models/%s:predict and %s/predict "
                "(ready in %.1f s; Ctrl-C stops)", first.version, args.model_dir, url,
                MODEL_NAME, url, time.perf_counter() - started)
    server = uvicorn.Server(uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=10,
        http=guarded_protocol(cap, params.serve_model.read_timeout_s, refusals)))
    # uvicorn answers Ctrl-C or SIGTERM (no new requests; those in flight finish), then raises
    # the signal again: Ctrl-C ends here, as the normal way to stop a server
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    refusals.say()
    logger.info("serve-model: stopped (%d requests answered)", app.state.service.metrics.total())
