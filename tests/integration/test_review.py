"""Review decisions: replayed in order (latest wins, undo takes back), applied by clean."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.clean import CleanParams
from pipeline.contracts import decisions as decision_log
from pipeline.contracts.decisions import Decision
from pipeline.runtime.errors import UserError

A, B = "a" * 64, "b" * 64


def _d(sha: str, action: str, label: str = "happy") -> Decision:
    return Decision(sha, action, label, decision_log.now())


def test_latest_decision_stands_and_undo_takes_back_one_at_a_time() -> None:
    history = [_d(A, "exclude"), _d(A, "relabel", "sad"), _d(B, "keep"), _d(B, "undo")]
    standing = decision_log.standing(history)
    assert standing[A].action == "relabel" and standing[A].label == "sad" and B not in standing
    standing = decision_log.standing([*history, _d(A, "undo")])
    assert standing[A].action == "exclude"  # the relabel taken back: the exclude stands again
    assert decision_log.standing([*history, _d(A, "undo"), _d(A, "undo"), _d(A, "undo")]) == {}


def test_decisions_round_trip_and_a_bad_line_names_itself(tmp_path: Path) -> None:
    path = tmp_path / "review" / "decisions.jsonl"
    assert decision_log.read(path) == []
    decision_log.append(path, [_d(A, "exclude"), Decision(B, "relabel", "sad", "t", note="a cartoon")])
    assert [d.action for d in decision_log.read(path)] == ["exclude", "relabel"]
    assert decision_log.read(path)[1].note == "a cartoon"
    with path.open("a") as handle:
        handle.write(json.dumps({"sha256": A, "action": "delete"}) + "\n")
    with pytest.raises(UserError, match=r"decisions.jsonl:3: action 'delete' is not one of"):
        decision_log.read(path)


def test_clean_applies_exclusions_and_relabels(tiny_raw: Path, tiny_clean_params: CleanParams,
                                               tmp_path: Path) -> None:
    from pipeline.stages.clean import clean

    before = clean(tiny_raw, tmp_path / "before", tiny_clean_params)
    kept = [json.loads(line) for line in (tmp_path / "before" / "images.jsonl").open()]
    happy = [r for r in kept if r["label"] == "happy" and r["group_size"] == 1]
    excluded, moved, looked = happy[0]["sha256"], happy[1]["sha256"], happy[2]["sha256"]
    path = tmp_path / "decisions.jsonl"
    decision_log.append(path, [Decision(excluded, "exclude", "happy", "t", note="an emoji"),
                         _d(moved, "relabel", "sad"), _d(looked, "keep")])
    after = clean(tiny_raw, tmp_path / "after", tiny_clean_params, path)

    rows = {r["sha256"]: r for r in map(json.loads, (tmp_path / "after" / "images.jsonl").open())}
    rejected = [json.loads(line) for line in (tmp_path / "after" / "rejected.jsonl").open()]
    assert excluded not in rows
    assert {"reason": "excluded_in_review", "detail": "an emoji"}.items() <= next(
        r for r in rejected if r["sha256"] == excluded).items()
    assert moved in rows, [r for r in rejected if r["sha256"] == moved]
    assert rows[moved]["label"] == "sad" and rows[moved]["label_source"] == "review"
    assert rows[looked]["label_source"] == "scrape" and rows[looked]["reviewed"] is True
    assert after.kept == {"happy": before.kept["happy"] - 2, "sad": before.kept["sad"] + 1}
    assert after.review == {"decisions": 3, "excluded": 1, "relabelled": 1, "marked_keep": 1,
                            "kept_reviewed": 2, "kept_unreviewed": sum(after.kept.values()) - 2}
    decision_log.append(path, [_d(excluded, "undo")])  # taken back: the image is kept again
    clean(tiny_raw, tmp_path / "undone", tiny_clean_params, path)
    assert excluded in (tmp_path / "undone" / "images.jsonl").read_text()


def test_a_relabel_to_an_unknown_class_is_one_clear_error(tiny_raw: Path, tmp_path: Path,
                                                          tiny_clean_params: CleanParams) -> None:
    from pipeline.stages.clean import clean

    sha = json.loads((tiny_raw / "manifest.jsonl").read_text().splitlines()[0])["sha256"]
    path = tmp_path / "decisions.jsonl"
    decision_log.append(path, [_d(sha, "relabel", "angry")])
    with pytest.raises(UserError, match=r"relabelled 'angry', not one of the classes"):
        clean(tiny_raw, tmp_path / "out", tiny_clean_params, path)


def test_suspects_rank_a_known_mislabel_first(tiny_raw: Path, tiny_clean_params: CleanParams,
                                              repo_params, tmp_path: Path) -> None:
    from pipeline.stages.clean import clean
    from pipeline.stages.suspects import Evidence, suspects

    clean(tiny_raw, tmp_path / "clean", tiny_clean_params)
    rows = [json.loads(line) for line in (tmp_path / "clean" / "images.jsonl").open()]
    rng = np.random.default_rng(0)
    # out-of-fold p(sad): a model that is right and sure, but for one happy image it calls sad
    probability = {r["sha256"]: (float(rng.uniform(0.01, 0.2) if r["label"] == "happy"
                                       else rng.uniform(0.8, 0.99)), "out_of_fold") for r in rows}
    wrong = next(r for r in rows if r["label"] == "happy")["sha256"]
    probability[wrong] = (0.97, "out_of_fold")
    evidence = Evidence([{k: str(r[k]) for k in ("file", "label", "sha256", "group", "group_size")}
                         for r in rows], {r["sha256"]: "train" for r in rows}, probability,
                        ["happy", "sad"])
    report = suspects(evidence, tiny_raw, tmp_path / "suspects", repo_params.suspects,
                      repo_params.faces, 0.5)
    ranked = [json.loads(line) for line in (tmp_path / "suspects" / "suspects.jsonl").open()]
    assert sorted(r["sha256"] for r in ranked) == sorted(r["sha256"] for r in rows)  # each once
    assert ranked[0]["sha256"] == wrong and "label_issue" in ranked[0]["flags"]
    assert ranked[0]["probability_of_class"] == pytest.approx(0.03)
    assert sum(report["flags"]["label_issue"].values()) == 1  # the sure, right ones are not flagged
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)


def test_no_face_in_a_plain_picture(repo_params) -> None:
    from pipeline.vision.faces import detect

    flat = np.full((240, 320, 3), 128, np.uint8)
    flat[60:180, 100:220] = 200  # a light square: no face
    assert detect(flat, repo_params.faces) == []




def _call(url: str, path: str, body: bytes | None = None, headers: dict | None = None):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url + path, data=body, headers=headers or {},
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_review_server_refuses_paths_foreign_origins_and_big_bodies(review_server) -> None:
    import re

    url, store = review_server
    status, page = _call(url, "/")
    token = re.search(rb'name="review-token" content="([^"]+)"', page).group(1).decode()
    sha = store.kept[0]["sha256"]
    assert _call(url, f"/thumb/{sha}")[0] == 200
    for bad in ("/thumb/../../etc/passwd", "/thumb/%2e%2e%2fmanifest.jsonl", "/thumb/" + "0" * 64,
                "/../data/raw/manifest.jsonl"):
        assert _call(url, bad)[0] == 404, bad
    good = json.dumps({"decisions": [{"sha256": sha, "action": "exclude"}]}).encode()
    own = {"Origin": url, "X-Review-Token": token, "Content-Type": "application/json"}
    assert _call(url, "/api/decisions", good, {**own, "Origin": "http://evil.example"})[0] == 403
    assert _call(url, "/api/decisions", good, {k: v for k, v in own.items() if k != "Origin"})[0] == 403
    assert _call(url, "/api/decisions", good, {**own, "X-Review-Token": "guess"})[0] == 403
    assert _call(url, "/api/decisions", b"x" * (300 * 1024), own)[0] == 413
    assert _call(url, "/api/decisions", json.dumps({"decisions": [
        {"sha256": "f" * 64, "action": "exclude"}]}).encode(), own)[0] == 400
    assert not store.decisions_path.exists()  # nothing refused was written
    assert _call(url, "/api/decisions", good, own)[0] == 200
    assert [d.action for d in decision_log.read(store.decisions_path)] == ["exclude"]
    listed = json.loads(_call(url, "/api/items?reviewed=yes")[1])
    assert [i["sha256"] for i in listed["items"]] == [sha]
    grouped = next(r for r in store.kept if r["group_size"] > 1)  # with a planted near copy
    copies = {r["sha256"] for r in store.rejected if r["group"] == grouped["group"]}
    other = next(c for c in store.classes if c != grouped["class"])
    assert _call(url, "/api/decisions", json.dumps({"decisions": [
        {"sha256": grouped["sha256"], "action": "relabel", "label": other}]}).encode(), own)[0] == 200
    moved = {d.sha256 for d in decision_log.read(store.decisions_path) if d.action == "relabel"}
    assert moved == {grouped["sha256"], *copies} and copies  # the copies follow their group
    members = json.loads(_call(url, f"/api/items?group={grouped['group']}")[1])["items"]
    assert {i["sha256"] for i in members} == {grouped["sha256"], *copies}  # the group's view


def test_a_decision_after_a_torn_line_is_saved_and_a_broken_file_is_refused_in_json(
        review_server) -> None:
    """``kill -9`` mid-write leaves half a line: the next POST's line starts on its own (the
    fragment dropped, never glued to); a line a person broke by hand is a JSON refusal."""
    import re

    url, store = review_server
    token = re.search(rb'name="review-token" content="([^"]+)"', _call(url, "/")[1]).group(1)
    own = {"Origin": url, "X-Review-Token": token.decode(), "Content-Type": "application/json"}
    first, second = store.kept[0]["sha256"], store.kept[1]["sha256"]
    decision_log.append(store.decisions_path, [_d(first, "keep", store.kept[0]["class"])])
    whole = store.decisions_path.read_bytes()
    store.decisions_path.write_bytes(whole + b'{"sha256": "' + second.encode()[:20])  # torn
    exclude = json.dumps({"decisions": [{"sha256": second, "action": "exclude"}]}).encode()
    assert _call(url, "/api/decisions", exclude, own)[0] == 200
    assert [(d.sha256, d.action) for d in decision_log.read(store.decisions_path)] == [
        (first, "keep"), (second, "exclude")]
    store.decisions_path.write_bytes(store.decisions_path.read_bytes() + b"{broken}\n")
    status, body = _call(url, "/api/decisions", exclude, own)
    assert status == 500 and "decisions.jsonl:3: not a review decision" in json.loads(body)["error"]
    assert _call(url, "/api/summary")[0] == 200  # still serving




def test_label_studio_tasks_round_trip_into_decisions(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from testing.project import REPO

    rows = [{"sha256": A, "class": "happy", "file": f"happy/{A}.jpg", "flags": ["label_issue"],
             "score": 2.9, "probability_of_class": 0.1},
            {"sha256": B, "class": "sad", "file": f"sad/{B}.png", "flags": [], "score": 0.2,
             "probability_of_class": 0.8}, {"sha256": "c" * 64, "class": "sad",
                                            "file": "sad/c.jpg", "flags": [], "score": 0.1,
                                            "probability_of_class": None}]
    (tmp_path / "suspects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline", "--params", str(REPO / "params.yaml"),
                               "labelstudio", *args, "--suspects", str(tmp_path / "suspects.jsonl"),
                               "--decisions", str(tmp_path / "decisions.jsonl")], cwd=tmp_path,
                              capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})

    assert cli("export", "tasks.json", "--top", "2").returncode == 0
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert [t["data"]["sha256"] for t in tasks] == [A, B]
    assert tasks[0]["predictions"][0]["result"][0]["value"]["choices"] == ["sad"]  # the model's guess
    assert "<Choice value=\"exclude\"/>" in (tmp_path / "tasks.xml").read_text()
    # A person answers both in Label Studio: the first is sad after all, the second not a person.
    for task, choice in zip(tasks, ["sad", "exclude"], strict=True):
        task["annotations"] = [{"was_cancelled": False, "updated_at": "2026-12-02T10:00:00Z",
                                "result": [{"from_name": "choice", "to_name": "image",
                                            "type": "choices", "value": {"choices": [choice]}}]}]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    assert cli("import", "export.json").returncode == 0
    made = decision_log.read(tmp_path / "decisions.jsonl")
    assert [(d.sha256, d.action, d.label) for d in made] == [(A, "relabel", "sad"),
                                                             (B, "exclude", "sad")]
    (tmp_path / "bad.json").write_text(json.dumps([{"data": {}, "annotations": tasks[0]["annotations"]}]))
    bad = cli("import", "bad.json")
    assert bad.returncode == 2 and "task 1 is not one this pipeline exported" in bad.stderr
