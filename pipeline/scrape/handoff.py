"""What a shared crawl's workers hand the scrape stage through Redis, checked before use.

Anyone who can write to the Redis server can write any of these keys, so each value is
parsed within a size bound, refused if it nests deeper than the contract's records do,
and checked field by field; a refusal is one ValueError saying what is wrong, which the
stage logs in one line and counts (``bad_shared_state``) before it goes on. Nothing is
copied into a report as it was read: an error line is written again from its checked
fields.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from pipeline.contracts import crawl as stat

MAX_ERROR_LINE_BYTES = 64 * 1024
MAX_STATS_BYTES = 4 * 2**20
MAX_LEASE_BYTES = 4 * 2**20  # a leased request: URL, headers, callback arguments


def refusal(what: str, why: object) -> str:
    """The one line for a value in Redis this crawl did not write, as the stage and the
    workers both log it."""
    return (f"{what} in the shared crawl's Redis is not one this crawl wrote "
            f"({str(why)[:200]}); left out")


def _json(raw: bytes, limit: int) -> Any:
    """``raw`` parsed as JSON, or ValueError: too long, not JSON, or nested absurdly deep."""
    if len(raw) > limit:
        raise ValueError(f"{len(raw)} bytes, more than the {limit} allowed")
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deep") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not JSON: {err}") from None


def checked_item(raw: bytes, labels: set[str], max_bytes: int) -> tuple[bytes, dict[str, Any]]:
    """A handed-over image's body and fields, or ValueError saying what is wrong with it."""
    data = _json(raw, (max_bytes * 4) // 3 + MAX_ERROR_LINE_BYTES)
    if not isinstance(data, dict) or set(data) != {*stat.ITEM_FIELDS, "body"}:
        raise ValueError("not an image record of this crawl")
    for name in stat.ITEM_FIELDS:
        optional = name in stat.ITEM_OPTIONAL_FIELDS
        if not isinstance(data[name], str) and not (optional and data[name] is None):
            raise ValueError(f"its {name} is not text")
    if data["label"] not in labels:
        raise ValueError(f"class {data['label'][:100]!r} is not one of this crawl's")
    try:
        body = base64.b64decode(data.pop("body"), validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise ValueError("its body is not base64") from None
    if len(body) > max_bytes:  # (an empty body is stored and recorded, as in one process)
        raise ValueError(f"its body has {len(body)} bytes (at most {max_bytes} allowed)")
    return body, data


def checked_error_line(raw: bytes, labels: set[str]) -> str:
    """An error line for errors.jsonl, written again from its checked fields."""
    data = _json(raw, MAX_ERROR_LINE_BYTES)
    if not isinstance(data, dict) or set(data) != set(stat.ERROR_FIELDS):
        raise ValueError("not an error line of this crawl")
    if not all(isinstance(data[name], str) for name in stat.ERROR_FIELDS):
        raise ValueError("a field of it is not text")
    if data["label"] not in labels and data["label"] != "":
        raise ValueError(f"class {data['label'][:100]!r} is not one of this crawl's")
    return json.dumps(data, sort_keys=True)


def checked_stats(raw: bytes) -> tuple[str, dict[str, int | float | str]]:
    """A worker's name and final stats: names to numbers or text, nothing nested."""
    data = _json(raw, MAX_STATS_BYTES)
    if not isinstance(data, dict) or set(data) != {"worker", "stats"}:
        raise ValueError("not a worker's stats")
    worker, stats = data["worker"], data["stats"]
    if not isinstance(worker, str) or not isinstance(stats, dict):
        raise ValueError("not a worker's stats")
    for key, value in stats.items():
        plain = isinstance(value, str) or (isinstance(value, int | float)
                                           and not isinstance(value, bool)
                                           and math.isfinite(value) and value >= 0)
        if not plain:
            raise ValueError(f"its {key[:100]!r} is {str(value)[:50]!r}, not a count or text")
    return worker, stats


def checked_lease(value: bytes) -> tuple[float, bytes]:
    """A leased request's queue score and encoded request ("score\\nrequest")."""
    if len(value) > MAX_LEASE_BYTES:
        raise ValueError(f"{len(value)} bytes, more than the {MAX_LEASE_BYTES} allowed")
    score_text, sep, request = value.partition(b"\n")
    try:
        score = float(score_text)
    except ValueError:
        score = math.nan
    if not sep or not math.isfinite(score) or not request:
        raise ValueError("not a leased request of this crawl")
    data = _json(request, MAX_LEASE_BYTES)
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        raise ValueError("not a request of this crawl")
    return score, request
