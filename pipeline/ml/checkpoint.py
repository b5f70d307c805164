"""A PyTorch checkpoint read into numpy without PyTorch, and without running its code.

A legacy ``torch.save`` file is a row of pickles (a magic number, the protocol, the machine's
byte order, the state dict, the keys of its storages) followed by each storage's raw bytes. A
pickle can name any importable function and have it called: this reader's unpickler admits
only the four globals a state dict of tensors needs (``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``, ``torch.LongStorage``), none of
them imported (the tensor is rebuilt here, from the bytes), and refuses every other one in one
line. Nothing of the file runs.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline.runtime.errors import UserError

MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization's MAGIC_NUMBER of a legacy file
DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64}
REBUILD = ("torch._utils", "_rebuild_tensor_v2")


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: type
    count: int


@dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild(storage: _Storage, offset: int, shape: tuple, stride: tuple, *_rest: object) -> _Tensor:
    return _Tensor(storage, int(offset), tuple(int(s) for s in shape), tuple(int(s) for s in stride))


class _Unpickler(pickle.Unpickler):
    """Admits the globals of a state dict of float and int64 tensors, and nothing else."""

    def __init__(self, stream: BinaryIO, where: Path) -> None:
        super().__init__(stream)
        self.where = where

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == REBUILD:
            return _rebuild
        if module == "torch" and name in DTYPES:
            return name
        raise UserError(f"{self.where}: the checkpoint names {module}.{name}, which a state dict "
                        "of tensors never needs; it is refused (nothing of the file was run)")

    def persistent_load(self, pid: object) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and pid[1] in DTYPES and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise UserError(f"{self.where}: a storage reference the checkpoint format does not "
                            "have; not a PyTorch state dict")
        return _Storage(pid[2], DTYPES[pid[1]], pid[4])


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a legacy ``torch.save`` state dict at ``path``, by name, as numpy arrays;
    a one-line ``UserError`` for anything else (a refused global, a truncated file)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read the checkpoint ({err.strerror or err})") from None
    stream = io.BytesIO(data)

    def load() -> object:  # the next pickle of the row
        return _Unpickler(stream, path).load()

    try:
        if load() != MAGIC:
            raise UserError(f"{path}: not a legacy PyTorch checkpoint (no magic number)")
        load()  # protocol version
        info = load()
        if not isinstance(info, dict) or not info.get("little_endian", False):
            raise UserError(f"{path}: a checkpoint of a big-endian machine; not read here")
        state = load()
        keys = load()
        raw: dict[str, np.ndarray] = {}
        dtypes = {t.storage.key: t.storage.dtype for t in _tensors(state)}  # once, not per key
        for key in keys:
            count = int.from_bytes(stream.read(8), "little")
            dtype = dtypes.get(key, np.float32)
            size = count * np.dtype(dtype).itemsize
            chunk = stream.read(size)
            if len(chunk) != size:
                raise UserError(f"{path}: truncated (storage {key} is cut short); fetch it again")
            raw[key] = np.frombuffer(chunk, dtype=dtype)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, RecursionError) as err:
        raise UserError(f"{path}: not a PyTorch checkpoint this reader can read "
                        f"({type(err).__name__}: {str(err)[:120]})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: holds {type(state).__name__}, not a state dict of tensors")
    return {name: _array(tensor, raw, path) for name, tensor in state.items()}


def _tensors(state: object) -> list[_Tensor]:
    return [v for v in state.values() if isinstance(v, _Tensor)] if isinstance(state, dict) else []


def _array(tensor: object, raw: dict[str, np.ndarray], path: Path) -> np.ndarray:
    if not isinstance(tensor, _Tensor) or tensor.storage.key not in raw:
        raise UserError(f"{path}: an entry that is not a tensor of the file; not a state dict")
    flat = raw[tensor.storage.key]
    itemsize = flat.dtype.itemsize
    span = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride, strict=True)) \
        if all(tensor.shape) else tensor.offset
    if span >= max(len(flat), 1) and all(tensor.shape):
        raise UserError(f"{path}: a tensor reaches past its storage; the file is damaged")
    view = np.lib.stride_tricks.as_strided(
        flat[tensor.offset:], shape=tensor.shape, strides=[s * itemsize for s in tensor.stride])
    return np.array(view)  # a copy: no view into the file's bytes
