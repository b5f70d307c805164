"""The HTTP service behind ``happysad serve-model``: TF Serving's REST API for the production
model, a plain ``POST /predict``, ``/health`` and ``/metrics``.

Every answer carries the version of the model that made it (``X-Model-Version``). A request
takes the model being served when it starts and keeps it to its end: a swap (see
:mod:`pipeline.serving.models`) lets it finish on the old one. Any image of a request that is
not usable fails the whole request with a 4xx naming it (``{"error": ...}``, as TF Serving
answers errors); nothing of a request is written anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from pipeline.ml.labeller import Answer
from pipeline.serving.metrics import Metrics
from pipeline.serving.models import ServedModel, Watcher
from pipeline.serving.requests import (
    INPUT_NAME,
    RequestError,
    Upload,
    form_images,
    read_body,
    tf_serving_instances,
)
from pipeline.vision.images import UnusableImageError, Views

if TYPE_CHECKING:
    from pipeline.config.serve_model import ServeModelParams

logger = logging.getLogger(__name__)
T = TypeVar("T")
MODEL_NAME = "happysad"  # the name TF Serving clients ask for: /v1/models/happysad:predict
VERSION_HEADER = "X-Model-Version"
OUTPUTS = ("label", "probability", "scores", "face_found")
# /v1/models/NAME[/versions/N|/labels/L][/metadata|:predict|:classify|:regress]
TF_PATH = re.compile(r"(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                     r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?")


@dataclass
class Service:
    """What the routes share: the watcher (whose ``current`` model answers), the pools, the
    figures."""

    model_dir: Path
    params: ServeModelParams
    watcher: Watcher
    metrics: Metrics
    prepare: ThreadPoolExecutor
    model_calls: ThreadPoolExecutor

    @property
    def current(self) -> ServedModel:
        return self.watcher.current

    def start(self, model: ServedModel) -> None:
        model.start(self.model_calls, self.params, self.metrics.batch)
        self.metrics.loaded(model.version)


def _reply(content: object, model: ServedModel | None, status: int = 200) -> JSONResponse:
    headers = {VERSION_HEADER: str(model.version)} if model is not None else {}
    return JSONResponse(content, status, headers)


async def _off_loop(service: Service, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on the prepare threads: parsing up to ``max_body_bytes`` of a request must
    not stop the event loop (and every other request, /health included) while it runs."""
    return await asyncio.get_running_loop().run_in_executor(service.prepare, fn, *args)


def _error(message: str, status: int, model: ServedModel | None) -> JSONResponse:
    return _reply({"error": message}, model, status)


async def _label(service: Service, model: ServedModel, uploads: list[Upload]
                 ) -> list[tuple[Answer, float]]:
    """Each upload's answer and class-1 probability from ``model``; the first unusable image
    is a :class:`RequestError` naming it."""
    loop = asyncio.get_running_loop()
    labeller = model.labeller

    def views(upload: Upload) -> Views:
        try:
            return labeller.views(upload.data)
        except UnusableImageError as err:
            raise RequestError(400, f"{upload.name}: not a usable image ({err})") from None

    prepared = await asyncio.gather(*(loop.run_in_executor(service.prepare, views, u) for u in uploads))
    assert model.batcher is not None
    probabilities = await asyncio.gather(*(model.batcher(v) for v in prepared))
    answers = []
    for upload, view, p in zip(uploads, prepared, probabilities, strict=True):
        if not np.isfinite(p):
            raise RequestError(500, f"{upload.name}: the model gives a non-finite probability ({p})")
        answers.append((labeller.answer(p, view.face_found), p))
    return answers


def _tf_outputs(answer: Answer, p: float) -> dict[str, object]:
    return {"label": answer.label, "probability": answer.probability,
            "scores": [round(1 - p, 6), round(p, 6)], "face_found": answer.face_found}


def _status(model: ServedModel) -> dict:
    return {"model_version_status": [{"version": str(model.version), "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}


def _metadata(model: ServedModel) -> dict:
    """TF Serving's GetModelMetadataResponse for the one signature: image bytes in, the label,
    its probability, both classes' scores and whether a face was found out."""
    batch = {"size": "-1", "name": ""}

    def tensor(dtype: str, name: str, *dims: str) -> dict:
        return {"dtype": dtype, "tensor_shape": {"dim": [batch, *({"size": d, "name": ""} for d in dims)],
                                                 "unknown_rank": False}, "name": name}

    names = model.labeller.class_names
    return {
        "model_spec": {"name": MODEL_NAME, "signature_name": "", "version": str(model.version)},
        "metadata": {"signature_def": {"signature_def": {"serving_default": {
            "inputs": {INPUT_NAME: tensor("DT_STRING", f"{INPUT_NAME}:0")},
            "outputs": {"label": tensor("DT_STRING", "label:0"),
                        "probability": tensor("DT_FLOAT", "probability:0"),
                        "scores": tensor("DT_FLOAT", "scores:0", str(len(names))),
                        "face_found": tensor("DT_BOOL", "face_found:0")},
            "method_name": "tensorflow/serving/predict"}}}}}


async def tf_serving(request: Request) -> Response:
    """``/v1/models/...``: TF Serving's model status, metadata and predict."""
    service: Service = request.app.state.service
    model = service.current
    match = TF_PATH.fullmatch(request.path_params["rest"])
    if match is None:
        return _error(f"Malformed request: {request.method} {request.url.path}", 404, model)
    name, version, label = match["name"], match["version"], match["label"]
    if name != MODEL_NAME or (version is not None and version != str(model.version)):
        wanted = f"Specific({name}, {version})" if version else f"Latest({name})"
        return _error(f"Servable not found for request: {wanted}", 404, model)
    if label is not None:
        return _error(f"Unrecognized servable version label: {label}", 404, model)
    verb = match["verb"]
    if verb is None:
        if request.method != "GET":
            return _error(f"Method {request.method} not allowed: GET the model's status or "
                          "metadata, POST to :predict", 405, model)
        return _reply(_metadata(model) if match["metadata"] else _status(model), model)
    if match["metadata"] or verb != "predict":
        return _error(f"{verb}: this model has one signature, serving_default, for :predict", 400, model)
    if request.method != "POST":
        return _error("Method GET not allowed: POST a predict request", 405, model)
    with model.in_use():
        try:
            body = await read_body(request, service.params.max_body_bytes)
            uploads, columnar = await _off_loop(service, tf_serving_instances, body,
                                                service.params.max_instances)
            answers = await _label(service, model, uploads)
        except RequestError as err:
            return _error(err.message, err.status, model)
    rows = [_tf_outputs(answer, p) for answer, p in answers]
    if columnar:
        return _reply({"outputs": {key: [row[key] for row in rows] for key in OUTPUTS}}, model)
    return _reply({"predictions": rows}, model)


async def predict(request: Request) -> Response:
    """``POST /predict``: images as a multipart form (or one as the body) in, ``happysad
    predict``'s JSON lines out as a list, each with the model version."""
    service: Service = request.app.state.service
    model = service.current
    with model.in_use():
        try:
            body = await read_body(request, service.params.max_body_bytes)
            uploads = await _off_loop(service, form_images, body,
                                      request.headers.get("content-type", ""),
                                      service.params.max_instances)
            answers = await _label(service, model, uploads)
        except RequestError as err:
            return _error(err.message, err.status, model)
    return _reply([{"path": upload.name, **answer.__dict__, "model_version": model.version}
                   for upload, (answer, _) in zip(uploads, answers, strict=True)], model)


async def health(request: Request) -> Response:
    model: ServedModel = request.app.state.service.current
    return _reply({"status": "ok", "model_version": model.version, "sha256": model.sha256,
                   "class_names": model.labeller.class_names, "threshold": model.labeller.threshold},
                  model)


async def metrics_page(request: Request) -> Response:
    service: Service = request.app.state.service
    return PlainTextResponse(service.metrics.render(), headers={
        VERSION_HEADER: str(service.current.version),
        "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error; see the server's log"
    if status == 404:
        detail = (f"{request.url.path}: not found; the routes are POST /v1/models/{MODEL_NAME}:predict, "
                  "POST /predict, GET /health and GET /metrics")
    elif status == 405:
        detail = f"{request.method} {request.url.path}: method not allowed"
    else:
        logger.error("serve-model: %s %s failed: %r", request.method, request.url.path, exc)
    return _error(detail, status, request.app.state.service.current)


def _route_of(path: str) -> str:
    """A bounded label for ``/metrics``: the route, not the raw path."""
    if path.startswith("/v1/models/"):
        return "tf_predict" if path.endswith(":predict") else "tf_model"
    return path.strip("/") if path in ("/predict", "/health", "/metrics") else "other"


class Observed:
    """Counts and times every request for ``/metrics`` (an ASGI middleware)."""

    def __init__(self, app: Callable, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def sent(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            self.metrics.request(_route_of(scope["path"]), status, time.perf_counter() - start)


def build_app(model_dir: Path, params: ServeModelParams, first: ServedModel,
              load: Callable[[], ServedModel]) -> Starlette:
    """The service for the model in ``model_dir``, serving ``first`` until the watcher loads a
    newer one with ``load``."""
    metrics = Metrics()
    threads = params.prepare_threads or os.cpu_count() or 1
    holder: dict[str, Service] = {}

    def swapped(model: ServedModel) -> None:
        holder["service"].start(model)

    watcher = Watcher(model_dir, load, first, params, swapped, metrics.load_failed)
    service = Service(model_dir, params, watcher, metrics,
                      ThreadPoolExecutor(threads, thread_name_prefix="prepare"),
                      ThreadPoolExecutor(1, thread_name_prefix="model"))
    holder["service"] = service

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start(first)
        watching = asyncio.get_running_loop().create_task(watcher.run())
        try:
            yield
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            if service.current.batcher is not None:
                await service.current.batcher.stop()
            service.prepare.shutdown(wait=False, cancel_futures=True)
            service.model_calls.shutdown(wait=True)

    app = Starlette(routes=[
        Route("/v1/models/{rest:path}", tf_serving, methods=["GET", "POST"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]),
    ], lifespan=lifespan, exception_handlers={HTTPException: _http_error, Exception: _http_error})
    app.state.service = service
    app.add_middleware(Observed, metrics=metrics)
    return app

