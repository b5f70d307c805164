"""Faults and bad input: each probe of the fault surveys, and where its test is.

The first survey:

1. `learning_rate: .inf`, NaN losses: test_train (a diverged run ships nothing; evaluate,
   save, promote and predict refuse non-finite numbers).
2. `kill -9` of the scrape stage, of `dvc`, of the flow: test_scrape (the crawler, the demo
   server and the temp folder go with the stage: e2e/test_killed_scrape); e2e/test_whole_stages
   (a stage goes with `dvc`).
3. clean and split deleting git-tracked files: test_clean, test_split.
4. bad model files and params files: test_train (model files), unit/test_params (params).
5. a page of 100,000 `<img>` tags: here (at most `max_page_elements`; the crawl goes on).
6. a 50 MB body without Content-Length: here (`too_large`, for an image and for a page).
7. a source the address guard refuses outright: test_sources (scrape fails, naming it).
8. class names, cron, time zones, booleans, huge numbers, duplicate keys: unit/test_params.
9. training resumed after a kill: test_train (it equals the uninterrupted run).

The third survey, each with what a user now sees:

1. links out of data/import: here (not imported, counted as ``links_refused`` in the
   scrape report and its log line).
2. a name that is not UTF-8, a FIFO in data/import: here (one line naming the file, from
   the scrape stage; from the flow before DVC hashes the folder: e2e/test_whole_stages).
3. predict on a FIFO, alone or in a folder: test_train (one line each, no wait; a
   non-UTF-8 name printed as ``\\xNN``).
4. an append after a torn last line: here (decisions, manifest, Label Studio import);
   test_review (the server answers every refusal in JSON); e2e/test_review_page (the page
   says "not saved").
5. a YAML alias bomb in params.yaml: here (one line, before anything expands it).
6. Label Studio exports with nulls, lists, bad sha256s, JSON-MIN, imported twice: here;
   against a real Label Studio server: e2e/test_labelstudio.
7. Label Studio's Local Files storage: e2e/test_labelstudio (the README's steps, the image
   fetched through Label Studio byte for byte).
8. redirect loops and too many redirects: here (``redirect_loop`` and
   ``too_many_redirects`` in errors.jsonl, not "blocked").
9. `kill -9` of clean and tfrecords: e2e/test_whole_stages (no worker and no resource
   tracker left).
10. a full disk: here (one line naming the file; the old file whole; no partial file).
Smaller: crossval off leaves valid metrics and no empty plots folder: test_crossval; the
preset keeps every line it does not change: unit/test_preset; SIGTERM stops `make serve`
without a warning: e2e/test_flows.

The fourth survey (issue "Faults, round four"), each with what a user now sees:

1. a crawl worker killed mid-crawl, joined from elsewhere or started by the stage:
   test_shared_crawl (its leased requests go back on the queue, a local one is replaced;
   the stage stores exactly what one process stores and logs "crawler worker W is gone
   (...): the N requests it held go back on the queue"; requests never fetched at the end
   make the stage exit non-zero); the Redis server shut down mid-crawl: the stage stops its
   workers and says so in one line, the images stored are kept, no worker is left and no
   traceback is printed.
2. hostile or broken Redis state (a list as a class, nesting 100,000 deep, non-JSON stats,
   junk error lines, text in the counters, a worker alive until the year 3000, junk leases
   and queued requests, a broken config for a joining worker): test_shared_crawl and
   unit/test_handoff (one line each, counted as ``bad_shared_state``; the crawl completes).
3. Dask without a cluster: test_dask (`banana`, an HTTP server's port, no scheduler: one line
   at once or within ``HAPPYSAD_DASK_WAIT_S``; every worker killed mid-stage: a line, then the
   stage stops after the wait naming how many images were done; a worker outside a checkout:
   one line naming its folder); the tune flow's door (``tune.dask_address``,
   ``--dask-address``) gives the same lines; ``*.partial`` output folders are git-ignored.
   test_shared_crawl: a "Redis" address where something accepts and never answers is one line
   after 10 s, not a hang.
4. open doors: ``make crawl-redis`` binds 127.0.0.1 and saves nothing, and
   binds another address only with a password (docs/scale.md gives the command and the
   bundled ``redis-server``'s path); docs/scale.md's Dask commands bind 127.0.0.1 (dashboard
   too), and TLS across machines.
5. serve-model stalls: test_serve (300 slow clients under ``ulimit -n 256``: closed after
   ``serve_model.read_timeout_s`` or refused over ``serve_model.max_connections``, said in a line or two,
   no traceback, /health answers; a 19 MB form of tiny parts refused at part 65, and 14 MB
   of TF Serving JSON with a million instances refused, both parsed off the event loop
   while /health answers; a card whose threshold is NaN is refused in one line
   by serve-model, which keeps the old model, and by ``happysad predict``, exit non-zero).
6. data/pretrain read by data/import's rules: test_pretrain (links out of it, to a face, to
   /etc/hostname or to a folder, refused and named; a FIFO, a name that is not UTF-8 and a
   dangling link are one line from the stage and, before DVC hashes the folder, the flow).
7. round-three doors: a dangling link in data/import is one line naming it, from the flow
   before DVC hashes the folder (pipeline.runtime.folders.check_folder, shared with 6); here:
   a torn last decision no longer stops review, Label Studio import or clean (left out with
   a warning, dropped by the next save); Label Studio results that are not objects, exports
   nested 100,000 deep, and annotations with no time (imported once, not every time);
   ``happysad preset`` on a full disk names params.yaml and writes no trial file (here), an
   anchor in params.yaml is blamed on params.yaml and an alias in a preset refused
   (unit/test_preset). Not fixable here: DVC reads params.yaml before any code of ours, so
   an alias bomb still reaches ``dvc status``; every command of ours refuses it in one line.
8. the Prefect work pool's edges: e2e/test_flows (``make worker`` stopped by SIGINT to its
   process group mid-run: the run is Crashed with the reason, no process of it is left, the
   next run starts on the next worker within a minute; a worker killed with ``kill -9``: the
   next worker on that machine marks the run it left Crashed); docs/operations.md says where
   a worker's results land and how to push them.
9. smaller: here, ``make deploy`` with a dead PREFECT_API_URL names it and says to start it or
   unset it, and ``make serve`` on PostgreSQL names that database (password left out);
   e2e/test_whole_stages: the retrain flow names a FIFO or a dangling link in data/import or
   data/pretrain in one line before Prefect starts the run (no traceback before it); here:
   ``make push``/``make pull`` (flows/share.py) against a real S3-API server say in one line
   which remote refused the keys (naming AWS_ACCESS_KEY_ID), found none, has no such bucket
   or did not answer, without DVC's support footer or Python's warnings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.contracts.raw import RawRecord, read_manifest
from testing.project import REPO, tool_env
from testing.sites import Answer, LoopbackSite, html, image, jpeg, params_with, run_scrape

BIG = 50 * 2**20  # streamed, against the 10 MiB limit of params_with


def test_a_page_of_100000_images_is_capped_and_the_crawl_goes_on(tmp_path: Path) -> None:
    flood = "".join(f'<img src="/img/{i}.jpg">' for i in range(100_000))
    with LoopbackSite() as site:
        site.routes.update({"/robots.txt": Answer(200, b"", {"Content-Type": "text/plain"}),
                            "/flood.html": html(f"<html><body>{flood}</body></html>"),
                            "/calm.html": html('<img src="/ok.jpg">'), "/ok.jpg": image(3)})
        site.routes.update({f"/img/{i}.jpg": image(i) for i in range(40)})
        source = {"kind": "gallery", "max_pages": 5, "max_images": 100_000,
                  "start_urls": {"happy": [f"{site.url}/flood.html", f"{site.url}/calm.html"]},
                  "image_selector": "img"}
        report, records = run_scrape(params_with({"web": source}, site, tmp_path,
                                                 max_page_elements=40), tmp_path)
        fetched = [p for p in site.paths() if p.startswith("/img/")]
    assert sorted(fetched) == sorted(f"/img/{i}.jpg" for i in range(40))  # the first 40 only
    assert f"{site.url}/ok.jpg" in records and len(records) == 41  # the other page still crawled
    assert report.errors == 0


def test_streamed_bodies_over_the_limit_are_too_large_for_images_and_pages(tmp_path: Path) -> None:
    """No Content-Length and no chunks: the body ends when the connection closes, so only the
    bytes received tell its size."""
    streamed = {"Content-Type": "image/jpeg"}
    with LoopbackSite() as site:
        site.routes.update({
            "/robots.txt": Answer(200, b"", {"Content-Type": "text/plain"}),
            "/g.html": html('<img src="/big.jpg"><img src="/ok.jpg">'), "/ok.jpg": image(1),
            "/big.jpg": Answer(200, b"\xff" * BIG, streamed, close_delimited=True),
            "/big.html": Answer(200, b"<html>" + b" " * BIG, {"Content-Type": "text/html"},
                                close_delimited=True)})
        source = {"kind": "gallery", "max_pages": 5, "max_images": 10, "image_selector": "img",
                  "start_urls": {"happy": [f"{site.url}/g.html", f"{site.url}/big.html"]}}
        report, records = run_scrape(params_with({"web": source}, site, tmp_path), tmp_path)
    errors = [json.loads(line) for line in (tmp_path / "reports" / "errors.jsonl").open()]
    assert sorted((e["url"].removeprefix(site.url), e["error"]) for e in errors) == [
        ("/big.html", "too_large"), ("/big.jpg", "too_large")]
    assert report.errors_by_kind == {"too_large": 2} and list(records) == [f"{site.url}/ok.jpg"]




# -- round three -------------------------------------------------------------------------

def _folder_params(tmp_path: Path, site: LoopbackSite):
    return params_with({"mine": {"kind": "folder", "path": "mine", "max_images": 100}}, site,
                       tmp_path)


def test_a_folder_source_reads_no_link_that_leads_out_of_its_folder(tmp_path: Path,
                                                                    monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    happy, outside = tmp_path / "mine" / "happy", tmp_path / "elsewhere"
    happy.mkdir(parents=True)
    (outside / "album").mkdir(parents=True)
    (happy / "a.jpg").write_bytes(jpeg(1))
    (happy / "same-a.jpg").symlink_to(happy / "a.jpg")  # inside the folder: fine
    (outside / "b.jpg").write_bytes(jpeg(2))
    (outside / "hostname").write_text("a machine's secret\n")
    (outside / "album" / "c.jpg").write_bytes(jpeg(3))
    (happy / "b.jpg").symlink_to(outside / "b.jpg")
    (happy / "hostname.jpg").symlink_to(outside / "hostname")
    (happy / "album").symlink_to(outside / "album", target_is_directory=True)
    with LoopbackSite() as site:
        report, records = run_scrape(_folder_params(tmp_path, site), Path("."))
    assert sorted(records) == ["file:mine/happy/a.jpg", "file:mine/happy/same-a.jpg"]
    assert report.links_refused == 3
    assert json.loads((tmp_path / "reports" / "report.json").read_text())["links_refused"] == 3
    stored = {p.read_bytes() for p in (tmp_path / "raw").rglob("*") if p.is_file()}
    assert not {jpeg(2), jpeg(3), b"a machine's secret\n"} & stored


def _scrape_cli(tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "--params", "params.yaml", "scrape",
                           "--raw", "raw", "--reports", "reports", "--site-dir", "site"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**tool_env(), "PYTHONPATH": str(REPO)})


def test_names_dvc_cannot_hash_and_special_files_stop_the_scrape_in_one_line(tmp_path: Path) -> None:
    happy = tmp_path / "mine" / "happy"
    happy.mkdir(parents=True)
    (happy / "a.jpg").write_bytes(jpeg(1))
    with LoopbackSite() as site:
        _folder_params(tmp_path, site)  # writes tmp_path/params.yaml
        bad_name = happy / os.fsdecode(b"caf\xe9.jpg")  # Latin-1, as old zip files carry
        bad_name.write_bytes(jpeg(2))
        refused = _scrape_cli(tmp_path)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert refused.stderr.strip().count("\n") == 0
        assert "mine/happy/caf\\xe9.jpg: the name is not UTF-8" in refused.stderr
        bad_name.unlink()
        os.mkfifo(happy / "pipe.jpg")
        refused = _scrape_cli(tmp_path)  # a hang would run into the timeout
        assert refused.returncode == 2 and "mine/happy/pipe.jpg: a FIFO" in refused.stderr
        (happy / "pipe.jpg").unlink()
        (happy / "zero.jpg").symlink_to("/dev/zero")
        refused = _scrape_cli(tmp_path)
        assert refused.returncode == 2 and "zero.jpg: a character device" in refused.stderr
        (happy / "zero.jpg").unlink()
        assert _scrape_cli(tmp_path).returncode == 0
    assert not (tmp_path / "raw" / "manifest.jsonl").read_text().count("caf")




def test_appends_after_a_torn_line_start_a_line_of_their_own(tmp_path: Path) -> None:
    from pipeline.contracts import decisions as decision_log
    from pipeline.contracts.raw import RawStore

    a, b = "a" * 64, "b" * 64
    path = tmp_path / "decisions.jsonl"
    decision_log.append(path, [decision_log.Decision(a, "keep", "happy", "t1")])
    with path.open("ab") as handle:
        handle.write(b'{"sha256": "' + b[:30].encode())  # kill -9 mid-write
    decision_log.append(path, [decision_log.Decision(b, "exclude", "sad", "t2")])
    assert [(d.sha256, d.action) for d in decision_log.read(path)] == [(a, "keep"), (b, "exclude")]
    store = RawStore(tmp_path / "raw")
    stored, sniffed, _ = store.store("happy", jpeg(1))
    record = RawRecord(url="u1", final_url="u1", page_url="p", source="s", query="", label="happy",
                       sha256=Path(stored).stem, path=stored, bytes=1, content_type="",
                       format=sniffed.format, width=1, height=1, licence=None, attribution=None,
                       fetched_at="t")
    store.append(record)
    with store.manifest_path.open("ab") as handle:
        handle.write(b'{"url": "u2", "fin')  # torn, and the store stays open
    store.append(RawRecord(**{**record.__dict__, "url": "u3"}))
    assert [r.url for r in read_manifest(tmp_path / "raw")] == ["u1", "u3"]


def test_a_yaml_alias_bomb_in_params_is_refused_in_one_line(tmp_path: Path) -> None:
    from pipeline.config.params import load_params
    from pipeline.runtime.errors import UserError

    text = (REPO / "params.yaml").read_text()
    bomb = "".join(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 12))
    for where in (text + "bomb:\n  l0: &l0 [x]\n" + bomb,
                  text.replace("filters: {choices: [", "filters: {choices: &boom [", 1)):
        (tmp_path / "params.yaml").write_text(where)
        started = time.monotonic()
        with pytest.raises(UserError, match=r"params.yaml: line \d+: YAML (anchor &|alias \*)\w+ is "
                                            r"not allowed .*write the values out$"):
            load_params(tmp_path / "params.yaml")
        assert time.monotonic() - started < 5


def _export(*tasks: object) -> list:
    return list(tasks)


LS_TASK = {"data": {"sha256": "a" * 64, "class": "happy"}, "annotations": [
    {"id": 7, "was_cancelled": False, "updated_at": "2026-12-02T10:00:00Z", "result": [
        {"from_name": "choice", "to_name": "image", "type": "choices",
         "value": {"choices": ["sad"]}}]}]}


@pytest.mark.parametrize(("task", "message"), [
    ({**LS_TASK, "annotations": None}, None),  # nobody answered: nothing to decide
    ({**LS_TASK, "annotations": {"id": 1}}, "annotations is not a list"),
    ({**LS_TASK, "data": None}, "is not one this pipeline exported"),
    ({**LS_TASK, "data": {"sha256": "not-a-sha", "class": "happy"}}, "is not one this pipeline"),
    ({**LS_TASK, "annotations": [{**LS_TASK["annotations"][0], "result": [
        {"from_name": "choice", "value": ["sad"]}]}]}, None),  # a list value: no choice in it
    ({**LS_TASK, "annotations": [{**LS_TASK["annotations"][0], "result": ["sad"]}]},
     None),  # a result that is not an object (before: AttributeError)
    ("a string", "not a task object"),
])
def test_label_studio_exports_are_checked_before_anything_is_appended(task, message,
                                                                      tmp_path: Path) -> None:
    from pipeline.review.labelstudio import decisions_from_export
    from pipeline.runtime.errors import UserError

    good = LS_TASK
    if message is None:
        assert decisions_from_export([task], ["happy", "sad"], tmp_path / "e.json") == []
        return
    with pytest.raises(UserError, match=f"e.json: task 2.*{message}"):
        decisions_from_export([good, task], ["happy", "sad"], tmp_path / "e.json")


def test_label_studio_json_min_is_refused_and_a_second_import_adds_nothing(tmp_path: Path) -> None:
    from pipeline.contracts import decisions as decision_log
    from pipeline.review.labelstudio import decisions_from_export, new_decisions
    from pipeline.runtime.errors import UserError

    json_min = [{"image": "/data/local-files/?d=x.jpg", "sha256": "a" * 64, "class": "happy",
                 "id": 1, "choice": "sad", "annotation_id": 7}]
    with pytest.raises(UserError, match="a JSON-MIN export.*export as JSON"):
        decisions_from_export(json_min, ["happy", "sad"], tmp_path / "e.json")
    path = tmp_path / "decisions.jsonl"
    made = decisions_from_export([LS_TASK], ["happy", "sad"], tmp_path / "e.json")
    decision_log.append(path, new_decisions(made, path))
    decision_log.append(path, [decision_log.Decision("a" * 64, "undo", "", "t")])  # a person took it back
    again = decisions_from_export([LS_TASK], ["happy", "sad"], tmp_path / "e.json")
    assert new_decisions(again, path) == []  # the undo still stands
    assert decision_log.standing(decision_log.read(path)) == {}


def test_untimed_annotations_and_deep_json_and_a_torn_last_decision(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An annotation with no updated_at (or created_at) is imported once, not on every import;
    an export nested 100,000 deep is one line; a last decision cut short (the review server
    killed mid-write) does not stop review, Label Studio import or clean from reading the
    file, and the next save drops it. (Before: appended again each time, RecursionError, and
    all three refused to start.)"""
    import logging

    from pipeline.contracts import decisions as decision_log
    from pipeline.review.labelstudio import decisions_from_export, new_decisions, read_export
    from pipeline.runtime.errors import UserError

    untimed = {**LS_TASK, "annotations": [{k: v for k, v in LS_TASK["annotations"][0].items()
                                           if k != "updated_at"}]}
    path = tmp_path / "decisions.jsonl"
    for _ in range(3):
        made = decisions_from_export([untimed], ["happy", "sad"], tmp_path / "e.json")
        decision_log.append(path, new_decisions(made, path))
    kept = decision_log.read(path)
    assert len(kept) == 1 and kept[0].time and kept[0].action == "relabel"

    (tmp_path / "deep.json").write_text("[" * 100_000)
    with pytest.raises(UserError, match="deep.json: JSON nested too deeply"):
        read_export(tmp_path / "deep.json")

    with path.open("ab") as handle:
        handle.write(b'{"action": "exclude", "sha256": "bbbb')  # what kill -9 mid-write leaves
    with caplog.at_level(logging.WARNING):
        assert decision_log.read(path) == kept
    assert any("decisions.jsonl:2: the last line was cut short" in r.getMessage()
               for r in caplog.records)
    decision_log.append(path, [decision_log.Decision("c" * 64, "exclude", "happy", decision_log.now())])
    assert [d.sha256[0] for d in decision_log.read(path)] == ["a", "c"]
    path.write_text(path.read_text() + "not a decision\n")  # a whole bad line: still refused
    with pytest.raises(UserError, match="decisions.jsonl:3: not a review decision"):
        decision_log.read(path)


def test_redirect_loops_and_long_chains_are_errors_not_blocked(tmp_path: Path) -> None:
    def to(path: str) -> Answer:
        return Answer(302, b"", {"Location": path})

    with LoopbackSite() as site:
        site.routes.update({"/robots.txt": Answer(200, b"", {"Content-Type": "text/plain"}),
                            "/g.html": html('<img src="/loop/a.jpg"><img src="/hop/0.jpg">'
                                            '<img src="/ok.jpg"><a class="next" href="/p/a">n</a>'),
                            "/loop/a.jpg": to("/loop/b.jpg"), "/loop/b.jpg": to("/loop/a.jpg"),
                            "/p/a": to("/p/b"), "/p/b": to("/p/a"), "/ok.jpg": image(1)})
        site.routes.update({f"/hop/{i}.jpg": to(f"/hop/{i + 1}.jpg") for i in range(30)})
        source = {"kind": "gallery", "max_pages": 5, "max_images": 10, "image_selector": "img",
                  "next_page_selector": "a.next", "start_urls": {"happy": [f"{site.url}/g.html"]}}
        report, records = run_scrape(params_with({"web": source}, site, tmp_path), tmp_path)
    errors = [json.loads(line) for line in (tmp_path / "reports" / "errors.jsonl").open()]
    assert sorted((e["url"].removeprefix(site.url), e["error"]) for e in errors) == [
        ("/hop/0.jpg", "too_many_redirects"), ("/loop/a.jpg", "redirect_loop"),
        ("/p/a", "redirect_loop")]
    assert report.blocked == 0 and list(records) == [f"{site.url}/ok.jpg"]








@pytest.fixture()
def full_disk(tmp_path: Path):
    """A 256 KiB tmpfs, filled to the brim once the test has put its files there."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({done.stderr.strip() or 'not root'})")

    def fill() -> None:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 1024):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)

    try:
        yield mount, fill
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_the_old_file_stays_whole(full_disk, tmp_path: Path) -> None:
    from pipeline.contracts import decisions as decision_log

    mount, fill = full_disk
    rows = [{"sha256": f"{n:064x}", "class": "happy", "label": "happy", "group": str(n),
             "file": f"happy/{n:064x}.jpg", "flags": [], "score": 1.0,
             "probability_of_class": 0.5} for n in range(400)]  # suspects and clean's rows
    (tmp_path / "suspects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (mount / "tasks.json").write_text("[]\n")  # an earlier export
    shutil.copyfile(REPO / "params.yaml", mount / "params.yaml")
    decision_log.append(mount / "decisions.jsonl", [decision_log.Decision("a" * 64, "keep", "happy", "t")])
    before = (mount / "decisions.jsonl").read_bytes()
    fill()
    export = subprocess.run([sys.executable, "-m", "pipeline", "--params", str(REPO / "params.yaml"),
                             "labelstudio", "export", str(mount / "tasks.json"), "--suspects",
                             str(tmp_path / "suspects.jsonl")], capture_output=True, text=True,
                            timeout=120, env={**tool_env(), "PYTHONPATH": str(REPO)})
    assert export.returncode == 1 and "Traceback" not in export.stderr
    assert export.stderr.strip() == (f"happysad labelstudio: error: {mount / 'tasks.json'}: No "
                                     "space left on device; free some space (or move the project "
                                     "to a larger disk) and run again")
    assert (mount / "tasks.json").read_text() == "[]\n"
    with pytest.raises(OSError, match="No space left"):
        decision_log.append(mount / "decisions.jsonl",
                      [decision_log.Decision("b" * 64, "exclude", "sad", "t", note="x" * 8192)])
    assert (mount / "decisions.jsonl").read_bytes() == before
    preset = subprocess.run([sys.executable, "-m", "pipeline", "--params",
                             str(mount / "params.yaml"), "preset", "web-photos"],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={**tool_env(), "PYTHONPATH": str(REPO)})
    assert preset.returncode == 1 and preset.stderr.strip().splitlines()[-1] == (
        f"happysad preset: error: {mount / 'params.yaml'}: No space left on device; free some "
        "space (or move the project to a larger disk) and run again"), preset.stderr
    assert (mount / "params.yaml").read_bytes() == (REPO / "params.yaml").read_bytes()
    assert sorted(p.name for p in mount.iterdir()) == ["decisions.jsonl", "filler", "params.yaml",
                                                       "tasks.json"]
    split = subprocess.run([sys.executable, "-m", "pipeline", "--params", str(REPO / "params.yaml"),
                            "split", "--images", str(tmp_path / "suspects.jsonl"), "--out",
                            str(mount / "split")], capture_output=True, text=True, timeout=120,
                           env={**tool_env(), "PYTHONPATH": str(REPO)})
    assert split.returncode != 0 and len(split.stderr.strip().splitlines()) == 1, split.stderr
    assert "No space left on device" in split.stderr


def test_the_flow_commands_name_the_server_and_database_they_mean(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """`make deploy` with a dead PREFECT_API_URL names it and does not tell the user to set it;
    `make serve` on PostgreSQL names that database (no password), not .prefect/."""
    import logging

    from flows import deploy, serve
    from testing.project import free_port

    dead = f"http://127.0.0.1:{free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", dead)
    said = subprocess.run([sys.executable, "-m", "flows.deploy", "--pool", "gpu"], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**tool_env(), "PREFECT_API_URL": dead})
    assert said.returncode == 2 and said.stderr.strip().splitlines()[-1] == (
        f"deploy: error: no Prefect server answers at PREFECT_API_URL={dead}; start it, or unset "
        "PREFECT_API_URL to deploy to `make serve` on this machine"), said.stderr
    assert deploy.__name__  # imported as a module above: the same code the command runs

    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL",
                       "postgresql+asyncpg://prefect:s3cret@db.example:5432/prefect")
    monkeypatch.setattr(serve, "start_server", lambda *a: (_ for _ in ()).throw(RuntimeError("x")))
    with caplog.at_level(logging.INFO, logger=serve.logger.name), pytest.raises(serve._ServeError):
        serve._server_for(free_port())
    line = next(r.getMessage() for r in caplog.records if "starting a Prefect server" in r.getMessage())
    assert line.endswith("(database postgresql+asyncpg at "
                         "postgresql+asyncpg://prefect@db.example:5432/prefect)"), line


@pytest.mark.slow
def test_make_push_and_pull_say_in_one_line_what_the_s3_remote_refused(tmp_path: Path) -> None:
    """`make push`/`make pull` against a real S3-API server (moto): keys it refuses, no keys,
    a bucket that is not there, an address where nothing answers; each one line naming the
    remote and what to do, without DVC's support footer or a Python warning."""
    from testing.project import GIT
    from testing.s3 import CREDENTIALS, s3_server

    project = tmp_path / "project"
    project.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(GIT + ["init", "-q"], cwd=project, check=True)
    subprocess.run(dvc + ["init", "-q"], cwd=project, check=True)
    (project / "a.txt").write_text("a file to share\n")
    subprocess.run(dvc + ["add", "-q", "a.txt"], cwd=project, check=True)
    home = tmp_path / "home"  # no ~/.aws here
    home.mkdir()
    env = {k: v for k, v in tool_env().items() if not k.startswith("AWS_")}
    env.update(HOME=str(home), PYTHONPATH=str(REPO),
               AWS_MAX_ATTEMPTS="1")  # botocore's: an address where nothing answers, tried once

    def share(direction: str, extra: dict[str, str]) -> str:
        done = subprocess.run([sys.executable, "-m", "flows.share", direction], cwd=project,
                              env={**env, **extra}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stdout + done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"make {direction}: error: "), done.stderr
        assert "Having any troubles" not in done.stdout + done.stderr
        assert "never awaited" not in done.stdout + done.stderr
        return lines[0]

    def remote(url: str, endpoint: str) -> None:
        subprocess.run(dvc + ["remote", "add", "-d", "-f", "team", url], cwd=project, check=True)
        subprocess.run(dvc + ["remote", "modify", "team", "endpointurl", endpoint], cwd=project,
                       check=True)

    assert "no default DVC remote" in share("push", CREDENTIALS)
    with s3_server("team-bucket", tmp_path / "moto.log", check_keys=True) as endpoint:
        remote("s3://team-bucket/dvc", endpoint)
        for direction in ("push", "pull"):
            line = share(direction, {**CREDENTIALS, "AWS_ACCESS_KEY_ID": "not-a-key"})
            assert f"'team' (s3://team-bucket/dvc at {endpoint}) refused the S3 keys" in line
            assert "AWS_ACCESS_KEY_ID" in line
        assert "found no S3 keys: export AWS_ACCESS_KEY_ID" in share("push", {})
    with s3_server("team-bucket", tmp_path / "moto2.log") as endpoint:
        remote("s3://another-bucket/dvc", endpoint)
        assert "has no such bucket" in share("push", CREDENTIALS)
        remote("s3://team-bucket/dvc", endpoint)
        pushed = subprocess.run([sys.executable, "-m", "flows.share", "push"], cwd=project,
                                env={**env, **CREDENTIALS}, capture_output=True, text=True,
                                timeout=300)
        assert pushed.returncode == 0 and "1 file pushed" in pushed.stdout, pushed.stderr
    remote("s3://team-bucket/dvc", endpoint)  # the server is gone now
    assert "did not answer: check its address" in share("pull", CREDENTIALS)
