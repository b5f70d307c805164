"""Where a run computes: seeds, deterministic ops on a CPU or mixed precision on a GPU, and
tf.distribute's strategy for ``train.distribute``."""

from __future__ import annotations

from pipeline.config.train import TrainParams


def configure_runtime(seed: int) -> str:
    """Seeds everything; deterministic ops on CPU, mixed precision on a GPU. Returns the device."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
        return "GPU (mixed float16)"
    keras.mixed_precision.set_global_policy("float32")
    tf.config.experimental.enable_op_determinism()
    return "CPU (deterministic)"


def strategy(params: TrainParams):
    """tf.distribute's strategy for train.distribute: mirrored over the GPUs present, else over
    the logical CPU devices (one, unless a caller split the CPU), or the default one."""
    import tensorflow as tf

    if params.distribute == "none":
        return tf.distribute.get_strategy()
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])
