"""The model a service answers with, and how a new one takes its place.

A :class:`ServedModel` is a snapshot: the model card and the LiteRT file are read into memory
once, and the files' identity (inode, size, modification time) is checked before and after, so
a model half copied or half pulled is never loaded. The :class:`Watcher` checks the model
folder every ``poll_s`` seconds; once a change has stayed still for ``settle_polls`` checks it
loads the new model beside the old one, tries it on one image, and only then swaps it in. A
request keeps the model it started with to its end, so it never sees half a model; a model
that fails to load is logged and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.contracts.export import CARD_FILE, LITE_FILE, card_of, parse_card
from pipeline.ml.inference import LiteRuntime
from pipeline.ml.labeller import Labeller
from pipeline.runtime.errors import UserError
from pipeline.serving.batching import Batcher
from pipeline.vision.images import Views

if TYPE_CHECKING:
    from pipeline.config.clean import ImageRules
    from pipeline.config.faces import FacesParams
    from pipeline.config.serve_model import ServeModelParams

logger = logging.getLogger(__name__)
WATCHED = (CARD_FILE, LITE_FILE)

# A file's identity: (inode, size, mtime in ns) for each watched file; None where one is missing
Signature = tuple[tuple[int, int, int] | None, ...]


def signature(model_dir: Path) -> Signature:
    marks = []
    for name in WATCHED:
        try:
            stat = os.stat(model_dir / name)
        except OSError:
            marks.append(None)
        else:
            marks.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(marks)


def version_of(card: dict, lite: bytes) -> int:
    """The model's version: its save time in seconds since 1970 (the same on every machine
    that pulls it, and larger for a later model), as TF Serving's versions are numbers."""
    try:
        saved = datetime.datetime.fromisoformat(card["date"])
        return int(saved.timestamp())
    except (KeyError, TypeError, ValueError):  # a card without a date: a number from the bytes
        return int(hashlib.sha256(lite).hexdigest()[:12], 16)


@dataclass
class ServedModel:
    """One loaded model: its labeller, version, and the batcher its requests queue in."""

    labeller: Labeller
    version: int
    sha256: str
    signature: Signature
    batcher: Batcher[Views] | None = None
    requests: int = 0  # in flight now
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self, executor: Executor, params: ServeModelParams, on_batch: Callable[[int], None]) -> None:
        self.batcher = Batcher(self.labeller.probabilities, executor, params.max_batch,
                               params.max_wait_ms / 1000, on_batch)
        self.batcher.start()

    @contextlib.contextmanager
    def in_use(self):
        """Held by a request from its first read of the model to its answer."""
        self.requests += 1
        self.idle.clear()
        try:
            yield self
        finally:
            self.requests -= 1
            if not self.requests:
                self.idle.set()

    async def retire(self) -> None:
        """Stop once the requests that started on this model have their answers."""
        if self.requests:
            await self.idle.wait()
        if self.batcher is not None:
            await self.batcher.stop()


def blank_views(labeller: Labeller) -> Views:
    """A black image in the model's input contract: what a new model is tried on."""
    from pipeline.contracts.features import face_size

    size, face = labeller.contract["image_size"], face_size(labeller.contract)
    return Views(np.zeros((size, size, 3), np.uint8),
                 np.zeros((face, face, 3), np.uint8) if face else None, False if face else None)


def load_model(model_dir: Path, look_for_faces: bool, require_face: bool,
               legacy: Callable[[], tuple[ImageRules, FacesParams]] | None = None) -> ServedModel:
    """A snapshot of the model in ``model_dir``, tried on one image; a one-line ``UserError``
    when there is none, it is incomplete, or it changes while being read. What it accepts and
    its face finder come from its card (``legacy``: for a card saved before cards had them)."""
    before = signature(model_dir)
    card_of(model_dir)  # no model there: its own one-line error
    if before[1] is None:
        raise UserError(f"{model_dir / LITE_FILE}: not found; serve-model runs the LiteRT export "
                        "the save stage writes (dvc repro save)")
    card_bytes = (model_dir / CARD_FILE).read_bytes()
    lite = (model_dir / LITE_FILE).read_bytes()
    if signature(model_dir) != before:
        raise UserError(f"{model_dir}: changed while it was read; tried again at the next check")
    card = parse_card(card_bytes, model_dir / CARD_FILE)  # the bytes served, checked
    try:
        runtime = LiteRuntime(content=lite)
    except (ValueError, RuntimeError) as err:
        raise UserError(f"{model_dir / LITE_FILE}: not a LiteRT model LiteRT can load ({err}); "
                        "export it again (dvc repro save)") from None
    labeller = Labeller.of(card, runtime, look_for_faces, None, require_face, legacy)
    probability = labeller.probabilities([blank_views(labeller)])
    if not np.all(np.isfinite(probability)):
        raise UserError(f"{model_dir / LITE_FILE}: gives a non-finite probability ({probability[0]}); "
                        "the model is broken, train it again")
    return ServedModel(labeller, version_of(card, lite), hashlib.sha256(lite).hexdigest(), before)


class Watcher:
    """Keeps ``current`` the newest loadable model in ``model_dir`` (see the module's doc)."""

    def __init__(self, model_dir: Path, load: Callable[[], ServedModel], first: ServedModel,
                 params: ServeModelParams, on_swap: Callable[[ServedModel], None],
                 on_failure: Callable[[], None]) -> None:
        self.model_dir = model_dir
        self.load = load
        self.current = first
        self.params = params
        self.on_swap = on_swap
        self.on_failure = on_failure
        self.retiring: set[asyncio.Task] = set()

    async def run(self) -> None:
        seen, still, failed = self.current.signature, 0, None
        while True:
            await asyncio.sleep(self.params.poll_s)
            now = signature(self.model_dir)
            if now == self.current.signature or now == failed:
                seen, still = now, 0
                continue
            still = still + 1 if now == seen else 0
            seen = now
            if still < self.params.settle_polls or None in now:
                continue  # still being written, or a promotion between its two renames
            try:
                model = await asyncio.get_running_loop().run_in_executor(None, self.load)
            except Exception as err:  # whatever is wrong with the new model, the old one serves on
                logger.warning("serve-model: %s; still serving version %d", err, self.current.version)
                failed = now if "changed while" not in str(err) else None
                self.on_failure()
                continue
            self.swap(model)

    def swap(self, model: ServedModel) -> None:
        old, self.current = self.current, model
        self.on_swap(model)
        logger.info("serve-model: now serving version %d (was %d), from %s", model.version,
                    old.version, self.model_dir)
        task = asyncio.get_running_loop().create_task(old.retire())
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)
