"""happysad review: a page on 127.0.0.1 to look at the data and decide what stays and under which class.

``happysad review [--port N]`` serves data/raw's kept and rejected images (as the
clean stage last saw them), most suspect first (reports/suspects), with filters by
class, flag and review state. Each action (keep, relabel to the other class,
exclude, undo) is appended to ``data/review/decisions.jsonl`` at once; the next
``dvc repro`` applies it in clean. The server is ``pipeline/review/server.py``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.contracts import decisions as decision_log
from pipeline.review.server import load_store, serve, summary
from pipeline.runtime.errors import UserError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, help="on 127.0.0.1 (default: any free port)")
    parser.add_argument("--clean", type=Path, default=Path("data/clean"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--suspects", type=Path, default=Path("reports/suspects/suspects.jsonl"))
    parser.add_argument("--decisions", type=Path, default=decision_log.DEFAULT_PATH)


def run(args: argparse.Namespace) -> None:
    store = load_store(args.clean, args.raw, args.suspects, args.decisions)
    try:
        server = serve(store, args.port)
    except OSError as err:
        raise UserError(f"127.0.0.1:{args.port}: cannot listen ({err.strerror}); pass another "
                        "--port or 0 for any free one") from None
    logger.info("review: %d kept and %d rejected images, %d reviewed; open http://127.0.0.1:%d/ "
                "(Ctrl-C stops; decisions go to %s, applied by the next dvc repro)",
                len(store.kept), len(store.rejected), summary(store)["reviewed"],
                server.server_address[1], args.decisions)
    with server:
        server.serve_forever()
