"""Near duplicates: candidate pairs by perceptual hash, confirmed by aligned thumbnails,
grouped around representatives so that groups cannot chain.

Candidates: a 64-bit DCT hash (pHash) and a sub-quadratic search for pairs within a
Hamming distance. Confirmation: each image's grey ``THUMB_SIDE`` px thumbnails, whole
and with ``CROPS`` cut from every side; a pair is a copy when one image's whole
thumbnail correlates with the other's best-aligned crop (either way round) at about 1
and no block of their difference is large: a re-encode, a resize or a crop of a few
percent differs a little everywhere, two faces of the same layout (or one face with
another expression) differ a lot somewhere. Grouping: in manifest order, an image
joins the group of the most similar earlier *representative* it is confirmed with,
else it starts a group; every member is confirmed against its representative, never
linked to it through a chain of members.

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
THUMB_SIDE = 32
CROPS = (0.0, 0.02, 0.04, 0.06)  # cut from each side of the confirmation thumbnails
BLOCKS = 4  # the residual grid: BLOCKS x BLOCKS blocks of a thumbnail


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


def chance_pairs(n: int, max_bits: int) -> float:
    """How many of n unrelated images' pairs are expected within ``max_bits`` by chance
    (uniform hashes; photos' hashes are less uniform, so more): the candidates to confirm
    grow as n squared, and past a few million they, not the copies, cost the time."""
    within = sum(math.comb(HASH_BITS, k) for k in range(max_bits + 1)) / 2.0 ** HASH_BITS
    return n * (n - 1) / 2 * within


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


def thumbnails(image: Image.Image) -> np.ndarray:
    """The confirmation thumbnails of an image: uint8, shape ``(len(CROPS), THUMB_SIDE**2)``."""
    grey = image.convert("L")
    w, h = grey.size
    rows = []
    for f in CROPS:
        cut = grey.crop((round(w * f), round(h * f), w - round(w * f), h - round(h * f)))
        rows.append(np.asarray(cut.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR),
                               dtype=np.uint8).ravel())
    return np.stack(rows)


def _standard(thumbs: np.ndarray) -> np.ndarray:
    """Each thumbnail at mean 0 and standard deviation 1."""
    v = thumbs.astype(np.float32)
    v -= v.mean(axis=-1, keepdims=True)
    v /= v.std(axis=-1, keepdims=True) + 1e-6
    return v


def pair_similarity(thumbs: np.ndarray, pairs: np.ndarray,
                    chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For each pair (i, j): the best correlation of one whole thumbnail with the other's
    crops, either way round (about 1 for copies), and at that alignment the largest RMS
    difference over a ``BLOCKS`` x ``BLOCKS`` grid: a copy differs a little everywhere, a
    different expression of the same face a lot in one place (its mouth). ``thumbs``:
    (n, crops, pixels) from :func:`thumbnails`."""
    x = _standard(thumbs)
    pixels = x.shape[-1]
    similarity = np.empty(len(pairs), dtype=np.float32)
    residual = np.empty(len(pairs), dtype=np.float32)
    block = THUMB_SIDE // BLOCKS
    for start in range(0, len(pairs), chunk):
        a, b = pairs[start:start + chunk, 0], pairs[start:start + chunk, 1]
        whole = np.concatenate([x[a, 0], x[b, 0]])  # (2c, d): each side's whole thumbnail
        crops = np.concatenate([x[b], x[a]])  # (2c, k, d): the other side's crops
        ncc = np.einsum("cd,ckd->ck", whole, crops) / pixels
        best = ncc.argmax(axis=1)
        diff = whole - crops[np.arange(len(crops)), best]
        blocks = (diff ** 2).reshape(-1, BLOCKS, block, BLOCKS, block).mean(axis=(2, 4))
        worst = np.sqrt(blocks.reshape(len(diff), -1).max(axis=1))
        n = len(a)
        pick = np.where(ncc.max(axis=1)[:n] >= ncc.max(axis=1)[n:], 0, n) + np.arange(n)
        similarity[start:start + n] = ncc.max(axis=1)[pick]
        residual[start:start + n] = worst[pick]
    return similarity, residual


def group_by_representative(n: int, pairs: np.ndarray,
                            scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each item's representative (itself for a representative) and its similarity to it, for
    items in order (earliest first) and confirmed ``pairs`` (i < j) with their ``scores``: an
    item joins its most similar earlier representative (the earliest on a tie), else it is
    one. No item is grouped through another member, so groups cannot chain."""
    representative = np.arange(n)
    similarity = np.ones(n, dtype=np.float32)
    earlier: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    for (i, j), score in zip(pairs.tolist(), scores.tolist(), strict=True):
        earlier[max(i, j)].append((-score, min(i, j)))
    for item in range(n):
        for negative, other in sorted(earlier[item]):
            if representative[other] == other:
                representative[item], similarity[item] = other, -negative
                break
    return representative, similarity
