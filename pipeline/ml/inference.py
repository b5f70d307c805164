"""What runs a shipped model on uint8 pixels: the LiteRT export (no TensorFlow, fast to start)
or the Keras model itself. ``predict`` labels files with one; promotion scores the champion."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.contracts.export import LITE_FILE
from pipeline.runtime.errors import UserError
from pipeline.runtime.log import load_tensorflow, native_stderr_to_debug

logger = logging.getLogger(__name__)


# What a model takes: a batch of uint8 pixels, or a two-view model's inputs by name
# (pipeline.contracts.features: pixels, face, face_found)
Inputs = np.ndarray | dict[str, np.ndarray]


class Runtime:
    """The model behind ``predict``: uint8 pixels in, the probability of class 1 out."""

    name = ""

    def __call__(self, inputs: Inputs) -> np.ndarray:
        raise NotImplementedError


def _input_name(detail: dict) -> str:
    """A LiteRT input's model input name: ``serving_default_face_found:0`` -> ``face_found``."""
    return detail["name"].split(":")[0].removeprefix("serving_default_")


class LiteRuntime(Runtime):
    """The save stage's LiteRT export: answers in a fraction of a second, no TensorFlow."""

    name = "litert"

    def __init__(self, path: Path | None = None, content: bytes | None = None) -> None:
        """From the file at ``path``, or its bytes (``content``: a snapshot read once, which
        a file replaced meanwhile cannot change)."""
        from ai_edge_litert.interpreter import Interpreter

        with native_stderr_to_debug("LiteRT"):  # its "Created XNNPACK delegate" notice
            self.interpreter = (Interpreter(model_content=content) if content is not None
                                else Interpreter(model_path=str(path)))
        self.inputs = {_input_name(d): d for d in self.interpreter.get_input_details()}
        self.output = self.interpreter.get_output_details()[0]
        self.shapes: tuple[tuple[int, ...], ...] = ()

    def __call__(self, inputs: Inputs) -> np.ndarray:
        if not isinstance(inputs, dict):
            inputs = {next(iter(self.inputs)): inputs}
        missing = set(self.inputs) - set(inputs)
        if missing:
            raise ValueError(f"the LiteRT model also takes {sorted(missing)}")
        shapes = tuple(inputs[name].shape for name in self.inputs)
        if shapes != self.shapes:
            with native_stderr_to_debug("LiteRT"):
                for name, detail in self.inputs.items():
                    self.interpreter.resize_tensor_input(detail["index"], inputs[name].shape)
                self.interpreter.allocate_tensors()
            self.shapes = shapes
        for name, detail in self.inputs.items():
            self.interpreter.set_tensor(detail["index"], inputs[name].astype(detail["dtype"]))
        self.interpreter.invoke()
        return np.asarray(self.interpreter.get_tensor(self.output["index"]), np.float64)[:, 0]


class KerasRuntime(Runtime):
    """The Keras model itself (loaded with ``safe_mode=True``): the fallback."""

    name = "keras"

    def __init__(self, path: Path) -> None:
        load_tensorflow()
        from pipeline.ml.model import load

        self.model = load(path)

    def __call__(self, inputs: Inputs) -> np.ndarray:
        return np.asarray(self.model(inputs, training=False), dtype=np.float64)[:, 0]


def load_runtime(model_dir: Path, runtime: str = "auto") -> Runtime:
    """LiteRT when the export is there (``auto``), else Keras; ``runtime`` forces one."""
    lite = model_dir / LITE_FILE
    if runtime == "litert" or (runtime == "auto" and lite.exists()):
        if not lite.exists():
            raise UserError(f"{lite}: not found; run `dvc repro save` to export it, or use "
                            "--runtime keras")
        try:
            return LiteRuntime(lite)
        except ImportError:
            if runtime == "litert":
                raise UserError("the ai-edge-litert package is not installed; `make setup` "
                                "installs it, or use --runtime keras") from None
            logger.warning("ai-edge-litert is not installed: predicting with Keras (slower start)")
    return KerasRuntime(model_dir / "model.keras")
