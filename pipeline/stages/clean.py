"""The clean stage: validate every raw image, drop exact and near duplicates, hold out conflicts.

Reads ``data/raw`` (manifest and files) and writes ``data/clean``:
``images.jsonl`` (one kept image per near-duplicate group, with the group id),
``rejected.jsonl`` (every record left out, with a reason code) and
``report.json`` (counts per class and reason). Images are not copied.

A group's id and representative are its earliest-fetched member; the manifest is
append-only, so both stay put when later crawls add images.

Review decisions (``data/review/decisions.jsonl``, see pipeline.contracts.decisions) apply
first: an excluded image is rejected as ``excluded_in_review``; a relabelled one
is cleaned under its new class and kept with ``label_source: review``. Every kept
row says whether a person reviewed it, and the report counts what nobody has yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.config.clean import CleanParams
from pipeline.config.loader import load_sections
from pipeline.contracts import decisions as decision_log
from pipeline.contracts.raw import RawRecord, read_manifest
from pipeline.runtime.entry import main
from pipeline.runtime.errors import UserError
from pipeline.runtime.outputs import replacing_files, write_jsonl, write_metrics
from pipeline.runtime.workers import parallel_map
from pipeline.vision.images import UnusableImageError, open_rgb
from pipeline.vision.near_duplicates import (
    CROPS,
    chance_pairs,
    group_by_representative,
    near_duplicate_pairs,
    pair_similarity,
    phash,
    thumbnails,
)

logger = logging.getLogger(__name__)

CHANCE_PAIRS_WARNING = 2e5  # expected chance pairs: 100k images at 16 bits (~1 min of search)


@dataclass(frozen=True)
class Inspection:
    """One raw file's verdict: its hash and size, or why it was rejected."""

    reason: str | None
    detail: str
    width: int | None = None
    height: int | None = None
    phash: int | None = None
    thumbnails: bytes = b""  # near_duplicates.thumbnails, for confirming candidate pairs


@dataclass(frozen=True)
class CleanReport:
    raw_records: int
    unique_files: int
    kept: dict[str, int]
    rejected: dict[str, int]
    rejected_by_class: dict[str, dict[str, int]]
    near_duplicate_groups: int
    largest_group: int
    candidate_pairs: int  # within clean.near_duplicate_bits
    confirmed_pairs: int  # of those, confirmed by the thumbnails
    label_conflicts: int
    review: dict[str, int]  # decisions applied; kept images reviewed and not yet


def inspect_file(path: Path, rules: CleanParams) -> Inspection:
    """Decode and check one file against the clean params' rules; never raises for a bad image."""
    try:
        data = path.read_bytes()
    except OSError as err:
        return Inspection("unreadable", f"{path}: {err.strerror or err}")
    try:
        rgb = open_rgb(data, rules)
    except UnusableImageError as err:
        return Inspection(err.reason, err.detail)
    return Inspection(None, "", rgb.width, rgb.height, phash(rgb), thumbnails(rgb).tobytes())


def _inspect_job(job: tuple[Path, CleanParams]) -> Inspection:
    return inspect_file(*job)


def _row(record: RawRecord, **extra: object) -> dict[str, object]:
    return {"file": record.path, "url": record.url, "label": record.label,
            "sha256": record.sha256, **extra}


def _read_records(raw_dir: Path) -> list[RawRecord]:
    manifest = raw_dir / "manifest.jsonl"
    if not manifest.exists():
        raise UserError(f"{manifest}: not found; run the scrape stage first (dvc repro scrape)")
    try:
        return list(read_manifest(raw_dir))
    except (ValueError, TypeError) as err:
        raise UserError(f"{manifest}: a record is not valid JSON ({err}); "
                        "restore the file from DVC (dvc checkout data/raw)") from None


def _drop_exact_copies(records: list[RawRecord],
                       rejected: list[dict[str, object]]) -> list[RawRecord]:
    """One record per (class, bytes): the first in manifest order is the original."""
    unique: dict[tuple[str, str], RawRecord] = {}
    for record in records:
        key = (record.label, record.sha256)
        if key in unique:
            rejected.append(_row(record, reason="exact_duplicate", detail="same bytes",
                                 of=unique[key].url))
        else:
            unique[key] = record
    return list(unique.values())


def _usable(raw_dir: Path, files: list[RawRecord], params: CleanParams,
            rejected: list[dict[str, object]]) -> list[tuple[RawRecord, Inspection]]:
    """The files that decode and pass the rules, each with its inspection."""
    inspections = list(parallel_map(_inspect_job, [(raw_dir / r.path, params) for r in files],
                                    params.workers, "clean"))
    for record, inspection in zip(files, inspections, strict=True):
        if inspection.reason is not None:
            rejected.append(_row(record, reason=inspection.reason, detail=inspection.detail))
    return [(r, i) for r, i in zip(files, inspections, strict=True) if i.reason is None]


@dataclass(frozen=True)
class _Groups:
    members: dict[int, list[int]]  # representative -> its members, itself first
    similarity: np.ndarray  # each image's similarity to its representative
    candidates: int  # pairs within the hash radius
    confirmed: int  # of which the thumbnails confirmed


def _groups(valid: list[tuple[RawRecord, Inspection]], params: CleanParams) -> _Groups:
    """Near-duplicate groups around representatives (see pipeline.vision.near_duplicates); the same
    bytes under two classes always pair up."""
    hashes = np.array([i.phash for _, i in valid], dtype=np.uint64)
    expected = chance_pairs(len(hashes), params.near_duplicate_bits)
    if expected > CHANCE_PAIRS_WARNING:
        logger.warning("%d images at clean.near_duplicate_bits %d: about %.1f million pairs match "
                       "by chance and each is checked; at this size 10-12 bits is far faster "
                       "(docs/scale.md, the scale plan)", len(hashes),
                       params.near_duplicate_bits, expected / 1e6)
    pairs = near_duplicate_pairs(hashes, params.near_duplicate_bits)
    thumbs = np.stack([np.frombuffer(i.thumbnails, np.uint8).reshape(len(CROPS), -1)
                       for _, i in valid]) if valid else np.empty((0, len(CROPS), 1), np.uint8)
    scores, residual = pair_similarity(thumbs, pairs)
    labels = np.array([r.label for r, _ in valid])
    # Across classes a pair must also have no block that differs much: the same face with
    # another expression (a burst of photos) is two good images, each rightly labelled, not
    # a copy filed twice. Within a class a confirmed pair costs at most one image.
    across = labels[pairs[:, 0]] != labels[pairs[:, 1]] if len(pairs) else np.zeros(0, bool)
    keep = ((scores >= params.near_duplicate_similarity)
            & (~across | (residual <= params.near_duplicate_block_residual)))
    first: dict[str, int] = {}
    same = []  # (earliest, later) indices of the same bytes (under another class)
    for index, (record, _) in enumerate(valid):
        earliest = first.setdefault(record.sha256, index)
        if earliest != index:
            same.append((earliest, index))
    confirmed = np.concatenate([pairs[keep], np.array(same, dtype=np.int64).reshape(-1, 2)])
    scores = np.concatenate([scores[keep], np.ones(len(same), dtype=np.float32)])
    representative, similarity = group_by_representative(len(valid), confirmed, scores)
    members: dict[int, list[int]] = defaultdict(list)
    for index, rep_index in enumerate(representative.tolist()):
        members[rep_index].append(index)
    return _Groups(dict(members), similarity, len(pairs), int(keep.sum()))


def _keep_representatives(valid: list[tuple[RawRecord, Inspection]], groups: _Groups,
                          rejected: list[dict[str, object]]) -> tuple[list[dict[str, object]], int]:
    """Each single-class group's representative, and the number of groups spanning classes
    (all of whose members are rejected as label conflicts, each with its similarity to the
    representative, so a review can show the pair)."""
    kept: list[dict[str, object]] = []
    conflicts = 0
    for root, indices in sorted(groups.members.items()):
        group_id = valid[root][0].sha256
        labels = sorted({valid[i][0].label for i in indices})
        if len(labels) > 1:
            conflicts += 1
            for i in indices:
                rejected.append(_row(valid[i][0], reason="label_conflict", group=group_id,
                                     of=valid[root][0].url,
                                     similarity=round(float(groups.similarity[i]), 4),
                                     detail=f"near-duplicate group spans {', '.join(labels)}"))
            continue
        representative, inspection = valid[root]
        kept.append(_row(representative, group=group_id, group_size=len(indices),
                         width=inspection.width, height=inspection.height,
                         phash=f"{inspection.phash:016x}"))
        for i in indices[1:]:
            rejected.append(_row(valid[i][0], reason="near_duplicate", group=group_id,
                                 of=representative.url,
                                 similarity=round(float(groups.similarity[i]), 4),
                                 detail="a confirmed copy of the group's representative"))
    return kept, conflicts


def _refuse_missing_classes(raw_dir: Path, records: list[RawRecord], report: CleanReport) -> None:
    for label in sorted({r.label for r in records}):
        if not report.kept.get(label):
            raise UserError(f"{raw_dir}: class {label!r} has no usable image after cleaning "
                            f"({report.rejected_by_class.get(label, {})}); crawl more or relax clean")
    if len(report.kept) < 2:
        raise UserError(f"{raw_dir}: found images of {len(report.kept)} class(es), need 2; "
                        "check scrape.classes")


def _apply_review(records: list[RawRecord], standing: dict[str, decision_log.Decision], where: Path,
                  rejected: list[dict[str, object]]) -> tuple[list[RawRecord], set[str]]:
    """The records with excluded images taken out (rejected, with the reviewer's note) and
    relabelled ones under their new class; and the sha256s whose class a review changed."""
    classes = {r.label for r in records}
    out, moved = [], set()
    for record in records:
        decision = standing.get(record.sha256)
        if decision is not None and decision.action == "exclude":
            rejected.append(_row(record, reason="excluded_in_review",
                                 detail=decision.note or "excluded by a reviewer"))
            continue
        if decision is not None and decision.action == "relabel" and decision.label != record.label:
            if decision.label not in classes:
                raise UserError(f"{where}: {record.sha256} is relabelled {decision.label!r}, not one "
                                f"of the classes {sorted(classes)}; fix that decision")
            record = dataclasses.replace(record, label=decision.label)
            moved.add(record.sha256)
        out.append(record)
    return out, moved


def _mark_reviewed(kept: list[dict[str, object]], standing: dict[str, decision_log.Decision],
                   moved: set[str]) -> dict[str, int]:
    for row in kept:
        row["label_source"] = "review" if row["sha256"] in moved else "scrape"
        row["reviewed"] = row["sha256"] in standing
    actions = Counter(d.action for d in standing.values())
    reviewed = sum(bool(row["reviewed"]) for row in kept)
    return {"decisions": len(standing), "excluded": actions["exclude"],
            "relabelled": actions["relabel"], "marked_keep": actions["keep"],
            "kept_reviewed": reviewed, "kept_unreviewed": len(kept) - reviewed}


def clean(raw_dir: Path, out_dir: Path, params: CleanParams,
          decisions: Path | None = None) -> CleanReport:
    """Validate and deduplicate ``raw_dir`` into ``out_dir``, after applying the review
    ``decisions`` standing (a decisions.jsonl; none when None); see the module docstring."""
    rejected: list[dict[str, object]] = []
    standing = decision_log.standing(decision_log.read(decisions)) if decisions else {}
    records, moved = _apply_review(_read_records(raw_dir), standing, decisions or Path(),
                                   rejected)
    files = _drop_exact_copies(records, rejected)
    valid = _usable(raw_dir, files, params, rejected)
    groups = _groups(valid, params)
    kept, conflicts = _keep_representatives(valid, groups, rejected)
    reviewed = _mark_reviewed(kept, standing, moved)
    report = _report(records, files, kept, rejected, groups, conflicts, reviewed)
    _refuse_missing_classes(raw_dir, records, report)
    with replacing_files(out_dir) as tmp:
        write_jsonl(tmp / "images.jsonl", kept)
        write_jsonl(tmp / "rejected.jsonl", rejected)
        (tmp / "report.json").write_text(json.dumps(asdict(report), indent=2, sort_keys=True) + "\n")
    return report


def _report(records: list[RawRecord], files: list[RawRecord], kept: list[dict[str, object]],
            rejected: list[dict[str, object]], groups: _Groups, conflicts: int,
            reviewed: dict[str, int]) -> CleanReport:
    by_class: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rejected:
        by_class[str(row["label"])][str(row["reason"])] += 1
    return CleanReport(
        raw_records=len(records),
        unique_files=len(files),
        kept=dict(sorted(Counter(str(r["label"]) for r in kept).items())),
        rejected=dict(sorted(Counter(str(r["reason"]) for r in rejected).items())),
        rejected_by_class={k: dict(sorted(v.items())) for k, v in sorted(by_class.items())},
        near_duplicate_groups=sum(1 for m in groups.members.values() if len(m) > 1),
        largest_group=max((len(m) for m in groups.members.values()), default=0),
        candidate_pairs=groups.candidates,
        confirmed_pairs=groups.confirmed,
        label_conflicts=conflicts,
        review=reviewed,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--out", type=Path, default=Path("data/clean"))
    parser.add_argument("--decisions", type=Path, default=decision_log.DEFAULT_PATH,
                        help="review decisions to apply (default: %(default)s)")
    parser.add_argument("--metrics", type=Path, default=Path("reports/clean/metrics.json"),
                        help="headline counts for `dvc metrics show` (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    report = clean(args.raw, args.out, load_sections(args.params, clean=CleanParams).clean, args.decisions)
    write_metrics(args.metrics, {"kept": sum(report.kept.values()),
                                 "rejected": sum(report.rejected.values())})
    logger.info("clean: kept %s; rejected %s; %d near-duplicate groups, %d label conflicts; "
                "%d kept images reviewed, %d not yet (happysad review); outputs in %s",
                report.kept, report.rejected, report.near_duplicate_groups,
                report.label_conflicts, report.review["kept_reviewed"],
                report.review["kept_unreviewed"], args.out)


if __name__ == "__main__":  # as dvc.yaml runs it: under its own name, for its logger
    sys.exit(main(__spec__.name))
