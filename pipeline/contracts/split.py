"""The splits, by name and in order: split's ``data/split/split.jsonl`` assigns each kept image
one of them, and tfrecords writes a shard set per split."""

SPLITS = ("train", "val", "test")


def check_fractions(fractions: dict[str, float]) -> None:
    """A share for each split, adding up to 1, or a ValueError saying what is wrong."""
    if set(fractions) != set(SPLITS):
        raise ValueError(f"fractions must name exactly {', '.join(SPLITS)}")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError("fractions must add up to 1")
