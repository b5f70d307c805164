"""The splits, by name and in order: split's ``data/split/split.jsonl`` assigns each kept image
one of them, and tfrecords writes a shard set per split. A near-duplicate group's split is
``split_of`` its id: the split stage's and the pretrain stage's faces are cut the same way."""

import hashlib

SPLITS = ("train", "val", "test")


def split_of(group: str, fractions: dict[str, float], seed: int) -> str:
    """The split of a near-duplicate group: a uniform number from a hash of the seed and the
    group's id, cut by ``fractions``; the same group always lands in the same split."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    where, edge = int.from_bytes(digest[:8], "big") / 2**64, 0.0
    for name in SPLITS:
        edge += fractions[name]
        if where < edge:
            return name
    return SPLITS[-1]


def check_fractions(fractions: dict[str, float]) -> None:
    """A share for each split, adding up to 1, or a ValueError saying what is wrong."""
    if set(fractions) != set(SPLITS):
        raise ValueError(f"fractions must name exactly {', '.join(SPLITS)}")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError("fractions must add up to 1")
