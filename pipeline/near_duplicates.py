"""Perceptual hashes and a sub-quadratic search for pairs within a Hamming distance.

The hash is a 64-bit DCT hash (pHash): the image as 32x32 grey, its 8x8 lowest
DCT frequencies, one bit each for above/below their median. Re-encoding,
resizing and small crops move few bits; unrelated images differ in about half.

The search is multi-index hashing: split the 64 bits into m chunks; two hashes
within r bits agree to within floor(r/m) bits on at least one chunk (pigeonhole),
so only pairs whose chunk values are that close are compared. Each chunk's values
index a bucket table (counting sort: an offset per possible value), probed with
every flip mask of at most floor(r/m) bits, all in numpy; m is chosen from the
number of hashes so that probes and candidate pairs balance.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
from PIL import Image

HASH_SIDE = 32
HASH_BITS = 64


@functools.cache
def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m


def phash(image: Image.Image) -> int:
    """The 64-bit perceptual hash of an image, as an unsigned int."""
    grey = image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    dct = _dct_matrix(HASH_SIDE)
    low = (dct @ pixels @ dct.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])  # the DC term says only how bright the image is
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a, b))


def _chunks(m: int) -> list[tuple[int, int]]:
    """(shift, width) of m nearly equal bit ranges covering 64 bits."""
    widths = [HASH_BITS // m + (1 if i < HASH_BITS % m else 0) for i in range(m)]
    shifts = np.cumsum([0, *widths[:-1]])
    return [(int(s), w) for s, w in zip(shifts, widths, strict=True)]


MAX_TABLE_BITS = 24  # a bucket table of 2**24 offsets is 128 MiB


def _plan(n: int, max_bits: int) -> int:
    """The chunk count with the least estimated work for n hashes and radius max_bits."""
    best, best_cost = 0, math.inf
    for m in range(1, 17):
        radius = max_bits // m
        if max(w for _, w in _chunks(m)) > MAX_TABLE_BITS:
            continue
        cost = 0.0
        for _, width in _chunks(m):
            masks = sum(math.comb(width, k) for k in range(radius + 1))
            cost += 2.0 ** width + masks * (n + 4 * n * n / 2.0 ** width)
        if cost < best_cost:
            best, best_cost = m, cost
    return best


def _flip_masks(width: int, radius: int) -> np.ndarray:
    masks = [0]
    for k in range(1, radius + 1):
        masks += [sum(1 << b for b in bits) for bits in itertools.combinations(range(width), k)]
    return np.array(masks, dtype=np.uint64)


def near_duplicate_pairs(hashes: np.ndarray, max_bits: int) -> np.ndarray:
    """All index pairs (i < j) whose hashes differ in at most ``max_bits`` bits, shape (k, 2)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    found: list[np.ndarray] = []
    m = _plan(n, max_bits)
    radius = max_bits // m
    for shift, width in _chunks(m):
        values = ((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
        order = np.argsort(values, kind="stable")
        # starts[v]..starts[v+1] are the positions in `order` of hashes whose chunk is v.
        starts = np.zeros((1 << width) + 1, dtype=np.int64)
        np.cumsum(np.bincount(values, minlength=1 << width), out=starts[1:])
        for mask in _flip_masks(width, radius).astype(np.int64):
            keys = values ^ mask
            lo = starts[keys]
            counts = starts[keys + 1] - lo
            if not counts.any():
                continue
            query = np.repeat(np.arange(n), counts)
            # Positions lo..hi-1 for every query, flattened without a Python loop.
            offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            other = order[np.repeat(lo, counts) + offsets]
            keep = query < other
            query, other = query[keep], other[keep]
            close = hamming(hashes[query], hashes[other]) <= max_bits
            found.append(np.stack([query[close], other[close]], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(found).astype(np.int64)
    return np.unique(pairs, axis=0)
