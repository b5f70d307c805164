"""What a shared crawl's workers hand the stage through Redis: anything else is refused in
one ValueError, whatever its type, size or depth."""

from __future__ import annotations

import base64
import json

import pytest

from pipeline.contracts import crawl as stat
from pipeline.scrape.handoff import checked_error_line, checked_item, checked_lease, checked_stats

LABELS = {"happy", "sad"}
DEEP = b"[" * 100_000 + b"]" * 100_000


def _record(**changes: object) -> bytes:
    fields = {name: "x" for name in stat.ITEM_FIELDS} | {"label": "happy", "licence": None}
    fields["body"] = base64.b64encode(b"\xff\xd8 an image").decode()
    return json.dumps(fields | changes).encode()


def test_the_stage_stores_only_well_formed_records_of_its_own_classes() -> None:
    body, fields = checked_item(_record(), LABELS, 100)
    assert body == b"\xff\xd8 an image" and fields["label"] == "happy"
    for bad, why in [(_record(label="../../etc"), "not one of this crawl's"),
                     (_record(label=["sad"]), "label is not text"),
                     (_record(label={"a": 1}), "label is not text"),
                     (_record(url=3), "url is not text"),
                     (_record(extra=1), "not an image record"),
                     (_record(body="***"), "not base64"),
                     (_record(body=["x"]), "not base64"),
                     (_record(body=base64.b64encode(b"x" * 101).decode()), "101 bytes"),
                     (b"[]", "not an image record"),
                     (DEEP, "bytes, more than"),
                     (b"[" * 5000 + b"]" * 5000, "nested too deep"),
                     (b"\xff\xfe", "not JSON"),
                     (b"x" * 10**6, "bytes, more than")]:
        with pytest.raises(ValueError, match=why):
            checked_item(bad, LABELS, 100)


def test_error_lines_are_written_again_from_their_checked_fields() -> None:
    line = {"url": "u", "page_url": "p", "label": "sad", "error": "http_404", "detail": "d"}
    assert checked_error_line(json.dumps(line, indent=4).encode(), LABELS) == \
        json.dumps(line, sort_keys=True)  # one line, whatever the worker sent
    for bad, why in [(b"anything\n{}", "not JSON"), (b"{}", "not an error line"),
                     (json.dumps(line | {"url": 1}).encode(), "not text"),
                     (json.dumps(line | {"label": "x"}).encode(), "not one of this crawl's"),
                     (json.dumps(line | {"more": ""}).encode(), "not an error line"),
                     (DEEP, "more than")]:
        with pytest.raises(ValueError, match=why):
            checked_error_line(bad, LABELS)


def test_worker_stats_are_flat_counts_and_text() -> None:
    assert checked_stats(b'{"worker": "w", "stats": {"a": 1, "b": 2.5, "c": "x"}}') == \
        ("w", {"a": 1, "b": 2.5, "c": "x"})
    for bad, why in [(b"not json", "not JSON"), (b'{"worker": "w"}', "not a worker's stats"),
                     (b'{"worker": 1, "stats": {}}', "not a worker's stats"),
                     (b'{"worker": "w", "stats": {"a": [1]}}', "not a count or text"),
                     (b'{"worker": "w", "stats": {"a": true}}', "not a count or text"),
                     (b'{"worker": "w", "stats": {"a": -1}}', "not a count or text"),
                     (b'{"worker": "w", "stats": {"a": NaN}}', "not a count or text"),
                     (b'{"worker": "w", "stats": ' + b"[" * 5000, "nested too deep")]:
        with pytest.raises(ValueError, match=why):
            checked_stats(bad)


def test_a_lease_is_a_score_and_a_request() -> None:
    assert checked_lease(b'-1.0\n{"url": "http://a/"}') == (-1.0, b'{"url": "http://a/"}')
    for bad in [b"", b"-1", b"x\n{}", b"inf\n{\"url\": \"u\"}", b"1\n[]", b"1\n{\"url\": 2}",
                b"1\nnot json"]:
        with pytest.raises(ValueError):
            checked_lease(bad)
