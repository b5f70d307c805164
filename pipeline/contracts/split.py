"""The splits, by name and in order: split's ``data/split/split.jsonl`` assigns each kept image
one of them, and tfrecords writes a shard set per split."""

SPLITS = ("train", "val", "test")
