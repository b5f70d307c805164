"""Shared fixtures: a tiny demo site generated in a temporary folder, and test params."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.site import generate_site
from pipeline.config.clean import CleanParams
from pipeline.config.params import Params, load_params
from pipeline.config.train import TrainParams
from testing.project import REPO, TINY_SITE, TINY_TRAIN, demo_site, params_file  # noqa: F401 - for the tests


@pytest.fixture(scope="session")
def repo_params() -> Params:
    return load_params(REPO / "params.yaml")


@pytest.fixture(scope="session")
def tiny_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo site with 10 faces per class and every planted fault."""
    site = tmp_path_factory.mktemp("site") / "demo_site"
    generate_site(site, TINY_SITE, workers=1)
    return site


@pytest.fixture(scope="session")
def fast_params(repo_params: Params) -> Params:
    """The repository's params with politeness delays off, so tests crawl quickly."""
    crawl = repo_params.scrape.crawl.model_copy(update={
        "autothrottle": False, "download_delay_s": 0.0, "progress_every_s": 1.0,
        "download_timeout_s": 5.0,
    })
    scrape = repo_params.scrape.model_copy(update={"crawl": crawl})
    demo = repo_params.demo_site.model_copy(update={
        k: v for k, v in TINY_SITE.__dict__.items()})
    return repo_params.model_copy(update={"scrape": scrape, "demo_site": demo})


@pytest.fixture(scope="session")
def tiny_raw(tiny_site: Path, fast_params: Params, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/raw as the scrape stage leaves it after crawling the tiny demo site."""
    from pipeline.stages.scrape import scrape

    raw = tmp_path_factory.mktemp("tiny_raw") / "raw"
    scrape(fast_params.scrape, fast_params.demo_site, raw, raw.parent / "reports", tiny_site)
    return raw


@pytest.fixture(scope="session")
def tiny_clean_params(repo_params: Params) -> CleanParams:
    """Clean params for the tiny site's 48-80 px faces."""
    return repo_params.clean.model_copy(update={"min_side": 32, "workers": 1})


@pytest.fixture(scope="session")
def tiny_records(tiny_raw: Path, tiny_clean_params: CleanParams, repo_params: Params,
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/tfrecords of the tiny crawl at 32 px (clean, split half/quarter/quarter, tfrecords)."""
    from pipeline.config.split import SplitParams
    from pipeline.stages.clean import clean
    from pipeline.stages.split import split
    from pipeline.stages.tfrecords import tfrecords

    work = tmp_path_factory.mktemp("tiny_records")
    clean(tiny_raw, work / "clean", tiny_clean_params)
    split(work / "clean" / "images.jsonl", work / "split",
          SplitParams(seed=3, fractions={"train": 0.5, "val": 0.25, "test": 0.25}))
    tfrecords(work / "split" / "split.jsonl", tiny_raw, work / "tfrecords",
              repo_params.tfrecords.model_copy(update={"image_size": 32, "workers": 1}))
    return work / "tfrecords"


@pytest.fixture(scope="session")
def tiny_train_params(repo_params: Params):
    """A two-block CNN for 32 px images that trains in seconds."""
    return repo_params.train.model_copy(update={**TINY_TRAIN, "epochs": 2})


@pytest.fixture()
def review_server(tiny_raw: Path, tiny_clean_params: CleanParams, tmp_path: Path):
    """The review page over the tiny crawl's clean result, on a free loopback port."""
    import threading

    from pipeline.review.server import load_store, serve
    from pipeline.stages.clean import clean

    clean(tiny_raw, tmp_path / "clean", tiny_clean_params)
    store = load_store(tmp_path / "clean", tiny_raw, tmp_path / "none.jsonl",
                       tmp_path / "review" / "decisions.jsonl")
    server = serve(store, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", store
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def trained(tiny_records: Path, tiny_train_params: TrainParams, tmp_path_factory) -> Path:
    """The tiny CNN trained two epochs on the tiny records (models/train, reports/train)."""
    from pipeline.ml.fit import train

    work = tmp_path_factory.mktemp("trained")
    train(tiny_records, work / "models" / "train", work / "reports" / "train", tiny_train_params, seed=5)
    return work


@pytest.fixture(scope="session")
def evaluated(trained: Path, tiny_records: Path, repo_params: Params) -> dict:
    """``trained``'s model evaluated on the test split (its reports/evaluate), once; its
    metrics. No test writes into ``trained``: they read what this wrote."""
    from pipeline.stages.evaluate import evaluate

    return evaluate(trained / "models" / "train" / "model.keras", tiny_records,
                    trained / "reports" / "train", trained / "reports" / "evaluate",
                    repo_params.evaluate)


@pytest.fixture(scope="session")
def saved(trained: Path, tiny_records: Path, evaluated: dict) -> Path:
    """``trained``'s model evaluated and saved: the shipped files under its models/."""
    from pipeline.stages.save import save

    settings = params_file(trained / "params.yaml", clean={"min_side": 32})  # the tiny faces
    save(trained / "models" / "train" / "model.keras", tiny_records,
         trained / "reports" / "evaluate" / "details.json", settings,
         trained / "dvc.lock", trained / "models")
    return trained / "models"
