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


class Runtime:
    """The model behind ``predict``: uint8 pixels in, the probability of class 1 out."""

    name = ""

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class LiteRuntime(Runtime):
    """The save stage's LiteRT export: answers in a fraction of a second, no TensorFlow."""

    name = "litert"

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path))
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.shape: tuple[int, ...] = ()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.shape != self.shape:
            with native_stderr_to_debug("LiteRT"):  # its "Created XNNPACK delegate" notice
                self.interpreter.resize_tensor_input(self.input["index"], pixels.shape)
                self.interpreter.allocate_tensors()
            self.shape = pixels.shape
        self.interpreter.set_tensor(self.input["index"], pixels.astype(self.input["dtype"]))
        self.interpreter.invoke()
        import numpy as np

        return np.asarray(self.interpreter.get_tensor(self.output["index"]), np.float64)[:, 0]


class KerasRuntime(Runtime):
    """The Keras model itself (loaded with ``safe_mode=True``): the fallback."""

    name = "keras"

    def __init__(self, path: Path) -> None:
        load_tensorflow()
        from pipeline.ml.model import load

        self.model = load(path)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        import numpy as np

        return np.asarray(self.model(pixels, training=False), dtype=np.float64)[:, 0]


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
